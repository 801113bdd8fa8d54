package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailcapture/store"
)

// Engine copies legacy mailboxes into the store and keeps them converged.
// One Engine serves every account; it holds no per-account state.
type Engine struct {
	Store *store.Store
	// IMAP is the legacy IMAP server.
	IMAP Endpoint
	Log  *slog.Logger
	// BatchMessages and BatchBytes bound one store batch (one filesystem
	// sync and one transaction). Defaults 500 and 32 MiB.
	BatchMessages int
	BatchBytes    int64
	// FetchChunk is how many messages one FETCH of bodies asks for.
	// Default 2000.
	FetchChunk int
	// VerifySample is how many bodies per folder verification re-fetches
	// and hashes. Default 8.
	VerifySample int

	// afterCommit, if set, runs after each committed batch (tests use it
	// to interrupt a pass at a known point).
	afterCommit func()
}

func (e *Engine) batchMessages() int { return orDefault(e.BatchMessages, 500) }
func (e *Engine) batchBytes() int64  { return int64(orDefault(int(e.BatchBytes), 32<<20)) }
func (e *Engine) fetchChunk() int    { return orDefault(e.FetchChunk, 2000) }
func (e *Engine) verifySample() int  { return orDefault(e.VerifySample, 8) }
func (e *Engine) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// PassResult reports what one sync pass changed in the store.
type PassResult struct {
	Folders         int
	Added           int
	AddedBytes      int64
	Expunged        int
	FlagsChanged    int
	FoldersCreated  int
	FoldersDeleted  int
	FoldersRenamed  int
	FoldersRecopied int
	// LegacyMessages and LegacyBytes measure the legacy mailbox.
	LegacyMessages int64
	LegacyBytes    int64
}

// Changed tells whether the pass found anything to do.
func (r PassResult) Changed() bool {
	return r.Added+r.Expunged+r.FlagsChanged+r.FoldersCreated+r.FoldersDeleted+r.FoldersRenamed+r.FoldersRecopied > 0
}

// errMailboxChanged means the legacy folder changed under a pass (sequence
// numbers moved); the folder is synced again.
var errMailboxChanged = errors.New("legacy folder changed during the pass")

// Pass runs one sync pass for the account: the whole copy the first time,
// a delta after that. Progress is committed batch by batch, so a pass that
// dies resumes where it stopped.
func (e *Engine) Pass(ctx context.Context, account, password string) (PassResult, error) {
	var res PassResult
	acct, err := e.Store.Account(ctx, account)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	conn, err := dialIMAP(ctx, e.IMAP, account, password)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	defer conn.Close()
	err = e.pass(ctx, conn, acct, &res)
	if err != nil {
		err = fmt.Errorf("capture %s: %w", account, conn.commandErr(ctx, err))
		if rerr := e.Store.RecordSync(ctx, account, time.Now(), err.Error()); rerr != nil {
			e.log().Error("record sync error", "account", account, "err", rerr)
		}
		return res, err
	}
	if err := e.Store.SetLegacySize(ctx, account, res.LegacyMessages, res.LegacyBytes); err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	if err := e.Store.RecordSync(ctx, account, time.Now(), ""); err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	conn.Logout().Wait()
	return res, nil
}

// commandErr names the cause of a failed command: the job's context ended
// (which closes the connection), or the legacy server fell silent.
func (c *imapConn) commandErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	case c.raw.timedOut() && !errors.Is(err, ErrTimeout):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}

// legacyFolder is one folder of the legacy LIST.
type legacyFolder struct {
	name       string
	attrs      []imap.MailboxAttr
	specialUse []string
	subscribed bool
}

func (e *Engine) pass(ctx context.Context, conn *imapConn, acct store.Account, res *PassResult) error {
	folders, prefix, sep, guessed, err := listFolders(conn)
	if err != nil {
		return err
	}
	if acct.LegacyPrefix != prefix || acct.LegacySeparator != sep || acct.SpecialUseGuessed != guessed {
		if err := e.Store.SetLegacyNamespace(ctx, acct.Name, prefix, sep, guessed); err != nil {
			return err
		}
	}
	localList, err := e.Store.Mailboxes(ctx, acct.ID)
	if err != nil {
		return err
	}
	local := map[string]store.Mailbox{}
	for _, m := range localList {
		local[m.Name] = m
	}
	seen := map[string]bool{}
	for _, f := range folders {
		seen[f.name] = true
	}
	// Local mirrors whose legacy folder is gone: renamed (found again by
	// UIDVALIDITY below) or deleted.
	orphans := map[uint32]store.Mailbox{}
	for _, m := range localList {
		if !seen[m.Name] && m.LegacyUIDValidity != 0 {
			orphans[m.LegacyUIDValidity] = m
		}
	}
	for _, f := range folders {
		if hasAttr(f.attrs, imap.MailboxAttrNoSelect) || hasAttr(f.attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		res.Folders++
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if err = e.syncFolder(ctx, conn, acct, f, local, orphans, res); !errors.Is(err, errMailboxChanged) {
				break
			}
			e.log().Info("legacy folder changed during sync; syncing it again", "account", acct.Name, "folder", f.name)
			if m, err := e.Store.MailboxByName(ctx, acct.ID, f.name); err == nil {
				local[f.name] = m
			}
		}
		if err != nil {
			return fmt.Errorf("folder %q: %w", f.name, err)
		}
	}
	for _, m := range orphans {
		if err := e.Store.DeleteMailbox(ctx, m.ID); err != nil {
			return err
		}
		res.FoldersDeleted++
	}
	return nil
}

// listFolders reads the legacy folder list, INBOX first, with the personal
// namespace prefix, the hierarchy separator, and special-use attributes
// (announced, or guessed from names when the server has no SPECIAL-USE).
func listFolders(conn *imapConn) (folders []legacyFolder, prefix, sep string, guessed bool, err error) {
	caps := conn.Caps()
	if caps.Has(imap.CapNamespace) {
		ns, err := conn.Namespace().Wait()
		if err != nil {
			return nil, "", "", false, fmt.Errorf("namespace: %w", err)
		}
		if len(ns.Personal) > 0 {
			prefix = ns.Personal[0].Prefix
			if ns.Personal[0].Delim != 0 {
				sep = string(ns.Personal[0].Delim)
			}
		}
	}
	opts := &imap.ListOptions{}
	if caps.Has(imap.CapListExtended) {
		opts.ReturnSubscribed = true
	}
	hasSpecialUse := caps.Has(imap.CapSpecialUse)
	if hasSpecialUse {
		opts.ReturnSpecialUse = true
	}
	list, err := conn.List("", "*", opts).Collect()
	if err != nil {
		return nil, "", "", false, fmt.Errorf("list: %w", err)
	}
	for _, mb := range list {
		f := legacyFolder{name: mb.Mailbox, attrs: mb.Attrs}
		if strings.EqualFold(f.name, "INBOX") {
			f.name = "INBOX"
		}
		if sep == "" && mb.Delim != 0 {
			sep = string(mb.Delim)
		}
		for _, a := range mb.Attrs {
			switch {
			case a == imap.MailboxAttrSubscribed:
				f.subscribed = true
			case isSpecialUse(a):
				f.specialUse = append(f.specialUse, string(a))
			}
		}
		folders = append(folders, f)
	}
	if !caps.Has(imap.CapListExtended) {
		subs, err := conn.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
		if err == nil {
			subscribed := map[string]bool{}
			for _, s := range subs {
				subscribed[s.Mailbox] = true
			}
			for i := range folders {
				folders[i].subscribed = subscribed[folders[i].name]
			}
		}
	}
	if !hasSpecialUse {
		guessed = true
		for i := range folders {
			folders[i].specialUse = guessSpecialUse(folders[i].name, prefix, sep)
		}
	}
	if sep == "" {
		sep = "/"
	}
	sort.SliceStable(folders, func(i, j int) bool {
		if (folders[i].name == "INBOX") != (folders[j].name == "INBOX") {
			return folders[i].name == "INBOX"
		}
		return folders[i].name < folders[j].name
	})
	return folders, prefix, sep, guessed, nil
}

func hasAttr(attrs []imap.MailboxAttr, want imap.MailboxAttr) bool {
	for _, a := range attrs {
		if strings.EqualFold(string(a), string(want)) {
			return true
		}
	}
	return false
}

func isSpecialUse(a imap.MailboxAttr) bool {
	switch a {
	case imap.MailboxAttrAll, imap.MailboxAttrArchive, imap.MailboxAttrDrafts, imap.MailboxAttrFlagged,
		imap.MailboxAttrJunk, imap.MailboxAttrSent, imap.MailboxAttrTrash, imap.MailboxAttrImportant:
		return true
	}
	return false
}

// guessSpecialUse maps well-known folder names (the last level, without
// the namespace prefix) to RFC 6154 attributes.
func guessSpecialUse(name, prefix, sep string) []string {
	leaf := strings.TrimPrefix(name, prefix)
	if sep != "" && strings.Contains(leaf, sep) {
		return nil // only top-level folders are guessed
	}
	switch strings.ToLower(leaf) {
	case "sent", "sent items", "sent messages", "sent mail", "gesendet", "gesendete objekte", "envoyés", "elementos enviados":
		return []string{string(imap.MailboxAttrSent)}
	case "drafts", "draft", "entwürfe", "brouillons", "borradores":
		return []string{string(imap.MailboxAttrDrafts)}
	case "trash", "deleted items", "deleted messages", "papierkorb", "corbeille", "bin":
		return []string{string(imap.MailboxAttrTrash)}
	case "junk", "spam", "junk e-mail", "junk email", "bulk mail":
		return []string{string(imap.MailboxAttrJunk)}
	case "archive", "archives", "archiv":
		return []string{string(imap.MailboxAttrArchive)}
	}
	return nil
}
