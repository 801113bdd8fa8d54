package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"mailcapture/addresses"
	"mailcapture/capture"
	"mailcapture/config"
	"mailcapture/export"
	"mailcapture/legacyclient"
	"mailcapture/retirement"
	"mailcapture/status"
	"mailcapture/store"
	"mailcapture/vault"
)

// openForCommand loads the configuration (positional arguments allowed)
// and opens the store read-only or for control requests.
func openForCommand(ctx context.Context, env *environment, fs *pflag.FlagSet, path *string, args []string, control bool) (*store.Store, []string, error) {
	_, st, rest, err := openWithConfig(ctx, env, fs, path, args, control)
	return st, rest, err
}

// openWithConfig is openForCommand that also returns the configuration.
func openWithConfig(ctx context.Context, env *environment, fs *pflag.FlagSet, path *string, args []string, control bool) (config.Config, *store.Store, []string, error) {
	if err := parseWithArgs(fs, args); err != nil {
		return config.Config{}, nil, nil, err
	}
	cfg, err := loadConfig(env, fs, path)
	if err != nil {
		return config.Config{}, nil, nil, err
	}
	st, err := store.Open(ctx, cfg.DataDir, store.Options{ReadOnly: !control, Control: control})
	if err != nil {
		return config.Config{}, nil, nil, fmt.Errorf("%w (has serve run with this data_dir yet?)", err)
	}
	return cfg, st, fs.Args(), nil
}

// directoryOf is the recipients' resolver the configuration describes,
// over st.
func directoryOf(cfg config.Config, st *store.Store) (*addresses.Directory, error) {
	dir := &addresses.Directory{Naming: addresses.Configured(&cfg), Domains: cfg.Domains, Store: st}
	if cfg.Addresses.File != "" {
		if _, _, err := dir.Load(cfg.Addresses.File); err != nil {
			return nil, fmt.Errorf("addresses.file: %w", err)
		}
	}
	return dir, nil
}

// openReadOnly is openForCommand for commands that take no positional
// arguments and only read.
func openReadOnly(ctx context.Context, env *environment, fs *pflag.FlagSet, path *string, args []string) (*store.Store, error) {
	st, rest, err := openForCommand(ctx, env, fs, path, args, false)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		st.Close()
		return nil, usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	return st, nil
}

// confirm asks a yes/no question on the terminal (without one, --yes is
// required) and says "nothing done" when the answer is no.
func confirm(env *environment, yes bool, question string) (bool, error) {
	if yes {
		return true, nil
	}
	if !env.canAsk {
		return false, usageError("confirm with --yes (no terminal to ask on)")
	}
	fmt.Fprintf(env.stdout, "%s [y/N] ", question)
	answer, _ := bufio.NewReader(env.stdin).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(answer)); a == "y" || a == "yes" {
		return true, nil
	}
	fmt.Fprintln(env.stdout, "nothing done")
	return false, nil
}

const accountsUsage = "--config FILE (list [--json] | show NAME [--json] | merge FROM INTO [--yes])"

func runAccounts(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "accounts", accountsUsage,
		"list the accounts mailcapture knows (flagging two that name one mailbox), show one (state, progress, folders, logins), or merge two that name one mailbox (serve stopped)")
	path := configFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	yes := fs.Bool("yes", false, "merge without asking")
	if err := parseWithArgs(fs, args); err != nil {
		return err
	}
	if rest := fs.Args(); len(rest) > 0 && rest[0] == "merge" {
		if len(rest) != 3 {
			return usageError("accounts merge: name the account to merge and the one to merge it into")
		}
		return mergeAccounts(ctx, env, fs, path, rest[1], rest[2], *yes)
	}
	cfg, err := loadConfig(env, fs, path)
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, cfg.DataDir, store.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("%w (has serve run with this data_dir yet?)", err)
	}
	defer st.Close()
	rest := fs.Args()
	switch {
	case len(rest) == 1 && rest[0] == "list":
		r, err := status.Collect(ctx, st, status.Options{PerAccount: true})
		if err != nil {
			return err
		}
		dups := sameMailbox(addresses.Configured(&cfg), r.AccountList)
		if *asJSON {
			rows := r.AccountList
			if rows == nil {
				rows = []status.Account{}
			}
			return writeJSON(env, rows)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ACCOUNT\tSTATE\tMESSAGES\tOF LEGACY\tLAST SYNC\tLAST ERROR")
		for _, a := range r.AccountList {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", a.Name, a.State, a.StoredMessages, a.LegacyMessages, when(a.LastSync), a.LastError)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%d accounts\n", len(r.AccountList))
		for _, group := range dups {
			fmt.Fprintf(env.stdout, "one mailbox, %d accounts: %s (merge with: mailcapture accounts merge %s %s)\n",
				len(group), strings.Join(group, ", "), group[0], group[len(group)-1])
		}
		return nil
	case len(rest) == 2 && rest[0] == "show":
		return showAccount(ctx, env, st, rest[1], *asJSON)
	}
	return usageError("accounts: say list, or show NAME")
}

// sameMailbox finds the accounts whose names name one mailbox (the same
// canonical address: "bob" and "bob@example.org"), marks them in rows,
// and returns each group, the canonical name last.
func sameMailbox(n addresses.Naming, rows []status.Account) [][]string {
	byCanonical := map[string][]int{}
	var order []string
	for i, a := range rows {
		c, err := n.Account(a.Name)
		if err != nil {
			continue
		}
		key := strings.ToLower(c)
		if byCanonical[key] == nil {
			order = append(order, key)
		}
		byCanonical[key] = append(byCanonical[key], i)
	}
	var groups [][]string
	for _, key := range order {
		idx := byCanonical[key]
		if len(idx) < 2 {
			continue
		}
		var names []string
		for _, i := range idx {
			names = append(names, rows[i].Name)
		}
		sort.SliceStable(names, func(i, j int) bool { return !strings.EqualFold(names[i], key) && strings.EqualFold(names[j], key) })
		for _, i := range idx {
			for _, other := range names {
				if other != rows[i].Name {
					rows[i].SameMailboxAs = append(rows[i].SameMailboxAs, other)
				}
			}
		}
		groups = append(groups, names)
	}
	return groups
}

// mergeAccounts is `mailcapture accounts merge`: the store is opened for
// writing, so serve must be stopped.
func mergeAccounts(ctx context.Context, env *environment, fs *pflag.FlagSet, path *string, from, into string, yes bool) error {
	cfg, err := loadConfig(env, fs, path)
	if err != nil {
		return err
	}
	ok, err := confirm(env, yes, fmt.Sprintf("Merge account %s into %s (one mailbox; nothing either holds is lost)?", from, into))
	if err != nil || !ok {
		return err
	}
	st, err := store.Open(ctx, cfg.DataDir, store.Options{})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("accounts merge needs the store to itself: stop serve first (%w)", err)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := st.MergeAccounts(ctx, from, into)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "merged %s into %s: kept the state and password of %s; %d messages moved, %d held by both kept once, %d folders moved\n",
		from, into, res.Kept, res.Moved, res.Duplicates, res.Folders)
	return nil
}

// accountDetail is `mailcapture accounts show`.
type accountDetail struct {
	Name              string           `json:"name"`
	State             store.State      `json:"state"`
	StateChangedAt    time.Time        `json:"state_changed_at"`
	CreatedAt         time.Time        `json:"created_at"`
	CapturedAt        time.Time        `json:"captured_at,omitzero"`
	LastSync          time.Time        `json:"last_sync,omitzero"`
	LastError         string           `json:"last_error,omitempty"`
	LegacyPrefix      string           `json:"legacy_prefix"`
	LegacySeparator   string           `json:"legacy_separator"`
	SpecialUseGuessed bool             `json:"special_use_guessed"`
	Stored            store.Progress   `json:"stored"`
	Legacy            store.Progress   `json:"legacy"`
	Folders           []folderDetail   `json:"folders"`
	Logins            map[string]int64 `json:"logins"`
	Sieve             sieveDetail      `json:"sieve"`
}

// sieveDetail is an account's Sieve scripts: where they came from, which
// are kept, the active one, and the last error it met at a delivery.
type sieveDetail struct {
	Source    store.SieveSource `json:"source"`
	Scripts   []string          `json:"scripts"`
	Active    string            `json:"active,omitempty"`
	LastError string            `json:"last_error,omitempty"`
}

type folderDetail struct {
	Name        string   `json:"name"`
	Messages    uint32   `json:"messages"`
	Bytes       int64    `json:"bytes"`
	UIDValidity uint32   `json:"uidvalidity"`
	UIDNext     uint32   `json:"uidnext"`
	SpecialUse  []string `json:"special_use,omitempty"`
	Subscribed  bool     `json:"subscribed"`
}

func showAccount(ctx context.Context, env *environment, st *store.Store, name string, asJSON bool) error {
	acct, err := st.Account(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no account %q (see mailcapture accounts list)", name)
	}
	if err != nil {
		return err
	}
	stored, err := st.AccountProgress(ctx, acct.ID)
	if err != nil {
		return err
	}
	d := accountDetail{Name: acct.Name, State: acct.State, StateChangedAt: acct.StateChangedAt, CreatedAt: acct.CreatedAt,
		CapturedAt: acct.CapturedAt, LastSync: acct.LastSyncAt, LastError: acct.LastError, LegacyPrefix: acct.LegacyPrefix,
		LegacySeparator: acct.LegacySeparator, SpecialUseGuessed: acct.SpecialUseGuessed, Stored: stored,
		Legacy: store.Progress{Messages: acct.LegacyMessages, Bytes: acct.LegacyBytes}, Folders: []folderDetail{}, Logins: map[string]int64{}}
	mailboxes, err := st.Mailboxes(ctx, acct.ID)
	if err != nil {
		return err
	}
	for _, m := range mailboxes {
		s, err := st.Status(ctx, m.ID, 0)
		if err != nil {
			return err
		}
		d.Folders = append(d.Folders, folderDetail{Name: m.Name, Messages: s.Messages, Bytes: s.Size, UIDValidity: m.UIDValidity,
			UIDNext: m.UIDNext, SpecialUse: m.SpecialUse, Subscribed: m.Subscribed})
	}
	logins, err := st.Logins(ctx)
	if err != nil {
		return err
	}
	for _, l := range logins {
		if strings.EqualFold(l.Account, acct.Name) {
			d.Logins[l.Protocol] += l.Count
		}
	}
	if d.Sieve.Source, d.Sieve.LastError, err = st.SieveState(ctx, acct.ID); err != nil {
		return err
	}
	scripts, err := st.SieveScripts(ctx, acct.ID)
	if err != nil {
		return err
	}
	d.Sieve.Scripts = []string{}
	for _, sc := range scripts {
		d.Sieve.Scripts = append(d.Sieve.Scripts, sc.Name)
		if sc.Active {
			d.Sieve.Active = sc.Name
		}
	}
	if asJSON {
		return writeJSON(env, d)
	}
	w := env.stdout
	fmt.Fprintf(w, "account:     %s\nstate:       %s (since %s)\n", d.Name, d.State, when(d.StateChangedAt))
	fmt.Fprintf(w, "copied:      %d of %d messages, %d of %d bytes\n", d.Stored.Messages, d.Legacy.Messages, d.Stored.Bytes, d.Legacy.Bytes)
	fmt.Fprintf(w, "last sync:   %s\n", when(d.LastSync))
	if d.LastError != "" {
		fmt.Fprintf(w, "last error:  %s\n", d.LastError)
	}
	fmt.Fprintf(w, "namespace:   prefix %q, separator %q (special-use guessed: %v)\n", d.LegacyPrefix, d.LegacySeparator, d.SpecialUseGuessed)
	fmt.Fprintf(w, "logins:      imap %d, pop3 %d, submission %d, managesieve %d\n", d.Logins["imap"], d.Logins["pop3"], d.Logins["submission"], d.Logins["managesieve"])
	switch {
	case d.Sieve.Source == store.SieveNone:
		fmt.Fprintln(w, "sieve:       none (the legacy server offered no ManageSieve)")
	case len(d.Sieve.Scripts) == 0:
		fmt.Fprintln(w, "sieve:       no scripts")
	default:
		active := "none active"
		if d.Sieve.Active != "" {
			active = "active: " + d.Sieve.Active
		}
		fmt.Fprintf(w, "sieve:       %s (%s)\n", strings.Join(d.Sieve.Scripts, ", "), active)
	}
	if d.Sieve.LastError != "" {
		fmt.Fprintf(w, "sieve error: %s\n", d.Sieve.LastError)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FOLDER\tMESSAGES\tBYTES\tUIDVALIDITY\tUIDNEXT\tSPECIAL-USE\tSUBSCRIBED")
	for _, f := range d.Folders {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%v\n", f.Name, f.Messages, f.Bytes, f.UIDValidity, f.UIDNext, strings.Join(f.SpecialUse, " "), f.Subscribed)
	}
	return tw.Flush()
}

func runCutover(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "cutover", "--config FILE NAME [--yes]",
		"force an account's cut-over now, converged or not; the running serve carries it out within seconds (with a final sync if it knows the user's password)")
	path := configFlags(fs)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	st, rest, err := openForCommand(ctx, env, fs, path, args, true)
	if err != nil {
		return err
	}
	defer st.Close()
	if len(rest) != 1 {
		return usageError("cutover: name one account")
	}
	name := rest[0]
	if _, err := st.Account(ctx, name); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no account %q (see mailcapture accounts list)", name)
	}
	ok, err := confirm(env, *yes, fmt.Sprintf("Cut %s over now, even if its copy has not converged?", name))
	if err != nil || !ok {
		return err
	}
	if err := st.RequestCutover(ctx, name); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "cut-over of %s requested; serve carries it out within seconds (or at its next start)\n", name)
	return nil
}

const retireUsage = "--config FILE [--check] [--force] [--yes] [--json]"

func runRetireLegacy(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "retire-legacy", retireUsage,
		"check what would break without the legacy server (--check), or record that it is gone: nothing is relayed, checked or synced there any more; refused while something would break, unless --force")
	path := configFlags(fs)
	check := fs.Bool("check", false, "only report what would break")
	force := fs.Bool("force", false, "retire even though something would break")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	cfg, st, rest, err := openWithConfig(ctx, env, fs, path, args, true)
	if err != nil {
		return err
	}
	defer st.Close()
	if len(rest) != 0 {
		return usageError(fmt.Sprintf("retire-legacy: unexpected argument %q", rest[0]))
	}
	if retired, at, err := st.LegacyRetired(ctx); err != nil {
		return err
	} else if retired {
		fmt.Fprintf(env.stdout, "the legacy server was retired on %s\n", when(at))
		return nil
	}
	dir, err := directoryOf(cfg, st)
	if err != nil {
		return err
	}
	look, err := legacyLook(cfg, st)
	if err != nil {
		return err
	}
	report, err := retirement.Check(ctx, st, dir, retirement.Options{Now: time.Now(), Look: look, Outbound: cfg.Outbound.Relay.Address != ""})
	if err != nil {
		return err
	}
	if *asJSON {
		if err := writeJSON(env, report); err != nil {
			return err
		}
	} else {
		printRetirement(env, report)
	}
	switch {
	case *check && report.Clear():
		return nil
	case *check:
		return fmt.Errorf("the legacy server is still needed (see above)")
	case !report.Clear() && !*force:
		return fmt.Errorf("retirement refused: something above would break (--force retires anyway)")
	}
	ok, err := confirm(env, *yes, "Retire the legacy server for good (nothing is relayed, checked or synced there any more)?")
	if err != nil || !ok {
		return err
	}
	if err := st.RetireLegacy(ctx, time.Now()); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "legacy server retired; serve stops using it within seconds")
	return nil
}

// legacyLook is how the retirement check looks into captured accounts'
// legacy mailboxes: with the master user, or with the vault's passwords;
// nil without either.
func legacyLook(cfg config.Config, st *store.Store) (retirement.LegacyLook, error) {
	if cfg.Legacy.IMAP.Address == "" {
		return nil, nil
	}
	engine := capture.NewEngine(st, cfg, slog.New(slog.DiscardHandler))
	var passwords func(ctx context.Context, account string) (string, bool)
	switch {
	case cfg.Legacy.Master.User != "":
		password, err := cfg.Legacy.Master.Password()
		if err != nil {
			return nil, fmt.Errorf("legacy.master.password_file: %w", err)
		}
		engine.Master = &legacyclient.MasterLogin{Username: cfg.Legacy.Master.User, Password: password, Style: cfg.Legacy.Master.Style, Separator: cfg.Legacy.Master.Separator}
		passwords = func(context.Context, string) (string, bool) { return "", true }
	case cfg.Vault.KeyFile != "":
		v, err := vault.Load(cfg.Vault.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("vault.key_file: %w", err)
		}
		passwords = func(ctx context.Context, account string) (string, bool) {
			creds, err := st.Credentials(ctx)
			if err != nil || creds[account] == nil {
				return "", false
			}
			password, err := v.Open(account, creds[account])
			return password, err == nil
		}
	default:
		return nil, nil
	}
	return func(ctx context.Context, account string) (map[string]uint32, bool, error) {
		password, ok := passwords(ctx, account)
		if !ok {
			return nil, false, nil
		}
		news, err := engine.LegacyNews(ctx, account, password)
		return news, err == nil, err
	}, nil
}

func printRetirement(env *environment, r retirement.Report) {
	if r.Clear() {
		fmt.Fprintln(env.stdout, "nothing would break without the legacy server")
	}
	for _, line := range r.Sentences() {
		fmt.Fprintln(env.stdout, line)
	}
	if r.LegacyNote != "" {
		fmt.Fprintf(env.stdout, "note: %s\n", r.LegacyNote)
	}
}

func writeJSON(env *environment, v any) error {
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

func runExport(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "export", "--config FILE --maildir DIR [--account NAME]...",
		"write accounts out as Dovecot-compatible Maildir++ trees (DIR/<account>/) with their UIDVALIDITY, UIDs, flags, keywords, dates, subscriptions and POP3 UIDLs; works while serve runs")
	path := configFlags(fs)
	dir := fs.String("maildir", "", "directory to write into (one subdirectory per account, which must not exist)")
	accounts := fs.StringArray("account", nil, "export only this account (repeatable); default all")
	st, rest, err := openForCommand(ctx, env, fs, path, args, false)
	if err != nil {
		return err
	}
	defer st.Close()
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("export: unexpected argument %q", rest[0]))
	}
	if *dir == "" {
		return usageError("export: --maildir DIR is required")
	}
	res, err := export.Maildir(ctx, st, *dir, *accounts)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "exported %d accounts, %d folders, %d messages (%d bytes) to %s\n", res.Accounts, res.Folders, res.Messages, res.Bytes, *dir)
	return nil
}
