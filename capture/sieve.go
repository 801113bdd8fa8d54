package capture

import (
	"bytes"
	"context"
	"fmt"

	"mailcapture/legacyclient"
	"mailcapture/sieve"
	"mailcapture/store"
)

// copySieve copies the account's Sieve scripts from the legacy
// ManageSieve server, byte for byte, with which one is active; each pass
// does it again, so a script changed at the legacy server before the
// cut-over arrives with the final sync. Without a ManageSieve server the
// account is recorded as having none.
func (e *Engine) copySieve(ctx context.Context, acct store.Account, password string) error {
	if e.ManageSieve.Address == "" {
		src, _, err := e.Store.SieveState(ctx, acct.ID)
		if err != nil || src != store.SieveUnknown {
			return err
		}
		return e.Store.ReplaceSieveScripts(ctx, acct.ID, nil, store.SieveNone)
	}
	s, err := legacyclient.LoginManageSieve(ctx, e.ManageSieve, e.credentials(acct, password))
	if err != nil {
		return fmt.Errorf("managesieve: %w", err)
	}
	defer s.Close()
	list, err := s.ListScripts(ctx)
	if err != nil {
		return fmt.Errorf("managesieve: %w", err)
	}
	scripts := make([]store.SieveScript, 0, len(list))
	for _, sc := range list {
		body, err := s.GetScript(ctx, sc.Name)
		if err != nil {
			return fmt.Errorf("managesieve: %w", err)
		}
		scripts = append(scripts, store.SieveScript{Name: sc.Name, Script: body, Active: sc.Active})
	}
	have, err := e.Store.SieveScripts(ctx, acct.ID)
	if err != nil {
		return err
	}
	if src, _, err := e.Store.SieveState(ctx, acct.ID); err == nil && src == store.SieveCopied && sameScripts(have, scripts) {
		return nil
	}
	if err := e.Store.ReplaceSieveScripts(ctx, acct.ID, scripts, store.SieveCopied); err != nil {
		return err
	}
	e.log().Info("sieve scripts copied", "account", acct.Name, "scripts", len(scripts))
	// A script this interpreter cannot run (an extension it lacks) is
	// said at once: its deliveries would all go to INBOX.
	problem := ""
	for _, sc := range scripts {
		if sc.Active {
			if _, err := sieve.Compile(sc.Script, e.Naming.Delimiters); err != nil {
				problem = fmt.Sprintf("script %q: %v", sc.Name, err)
				e.log().Warn("an account's active Sieve script cannot run here; its mail will go to INBOX until the script is changed", "account", acct.Name, "err", problem)
			}
		}
	}
	return e.Store.SetSieveError(ctx, acct.ID, problem)
}

// sameScripts compares two sets of scripts, both ordered by name.
func sameScripts(a, b []store.SieveScript) bool {
	if len(a) != len(b) {
		return false
	}
	byName := map[string]store.SieveScript{}
	for _, sc := range a {
		byName[sc.Name] = sc
	}
	for _, sc := range b {
		o, ok := byName[sc.Name]
		if !ok || o.Active != sc.Active || !bytes.Equal(o.Script, sc.Script) {
			return false
		}
	}
	return true
}
