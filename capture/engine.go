package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailcapture/addresses"
	"mailcapture/legacyclient"
	"mailcapture/store"
)

// Engine copies legacy mailboxes into the store and keeps them converged.
// One Engine serves every account; it holds no per-account state.
type Engine struct {
	Store *store.Store
	// IMAP is the legacy IMAP server; with an empty address, the account's
	// INBOX is captured over POP3.
	IMAP legacyclient.Endpoint
	// POP3 is the legacy POP3 server, if any. With IMAP too, its UIDLs are
	// mapped onto the messages copied over IMAP.
	POP3 legacyclient.Endpoint
	// ManageSieve is the legacy ManageSieve server, if any: each pass
	// copies the account's Sieve scripts from it.
	ManageSieve legacyclient.Endpoint
	// Master, if set, logs in to every account as this master user; the
	// password given to Pass is then not used.
	Master *legacyclient.MasterLogin
	// Naming says what name the legacy server is sent for an account.
	Naming addresses.Naming
	// OnLatency, if set, receives the duration of each legacy login
	// (connect, greeting, TLS, authentication): the scheduler watches it.
	OnLatency func(time.Duration)
	// Observer, if set, receives events for metrics.
	Observer Observer
	Log      *slog.Logger
	// BatchMessages and BatchBytes bound one store batch (one filesystem
	// sync and one transaction). Defaults 500 and 32 MiB.
	BatchMessages int
	BatchBytes    int64
	// FetchChunk is how many messages one FETCH of bodies asks for.
	// Default 2000.
	FetchChunk int
	// MetadataWindow is how many messages of a folder a pass compares at
	// a time (their metadata fetched, their local copies read): memory
	// stays flat whatever the folder's size. It is rounded up to a
	// multiple of FetchChunk, so that windows end where FETCHes of bodies
	// end. Default 5000 (6000 with the default FetchChunk).
	MetadataWindow int
	// VerifySample is how many bodies per folder verification re-fetches
	// and hashes. Default 8.
	VerifySample int
	// Connections is how many legacy connections one account's pass uses
	// at most. Default 2.
	Connections int
	// ExtraConnectionDelay is how long a pass works on its first
	// connection before it opens the others for the folders still
	// waiting (each is a login at the legacy server). Default 100 ms.
	ExtraConnectionDelay time.Duration
	// NoCondStore makes every pass compare every folder message by
	// message, even where the legacy server offers CONDSTORE and reports
	// the folder unchanged since its last sync.
	NoCondStore bool

	// afterCommit, if set, runs after each committed batch (tests use it
	// to interrupt a pass at a known point).
	afterCommit func()
	// afterAdd, if set, runs after each message streamed into a batch.
	afterAdd func()
	hookMu   sync.Mutex
}

func (e *Engine) batchMessages() int { return orDefault(e.BatchMessages, 500) }
func (e *Engine) batchBytes() int64  { return int64(orDefault(int(e.BatchBytes), 32<<20)) }
func (e *Engine) fetchChunk() int    { return orDefault(e.FetchChunk, 2000) }
func (e *Engine) metadataWindow() int {
	w, c := orDefault(e.MetadataWindow, 5000), e.fetchChunk()
	return (w + c - 1) / c * c
}
func (e *Engine) verifySample() int { return orDefault(e.VerifySample, 8) }
func (e *Engine) connections() int  { return orDefault(e.Connections, 2) }
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
	// FoldersUnchanged counts folders skipped because the legacy server
	// reported them unchanged since their last sync (CONDSTORE).
	FoldersUnchanged int
	// LegacyMessages and LegacyBytes measure the legacy mailbox.
	LegacyMessages int64
	LegacyBytes    int64
}

// Changed tells whether the pass found anything to do.
func (r PassResult) Changed() bool {
	return r.Added+r.Expunged+r.FlagsChanged+r.FoldersCreated+r.FoldersDeleted+r.FoldersRenamed+r.FoldersRecopied > 0
}

// Trickle tells whether the pass found only a few message changes (new
// mail arriving, flags set by the user) and no folder changes: a mailbox
// that keeps getting mail never yields a pass with nothing to do.
func (r PassResult) Trickle(limit int) bool {
	return r.FoldersCreated+r.FoldersDeleted+r.FoldersRenamed+r.FoldersRecopied == 0 &&
		r.Added+r.Expunged+r.FlagsChanged <= limit
}

// errMailboxChanged means the legacy folder changed under a pass (sequence
// numbers moved); the folder is synced again.
var errMailboxChanged = errors.New("legacy folder changed during the pass")

// Pass runs one sync pass for the account: the whole copy the first time,
// a delta after that. Folders are shared out over up to Connections legacy
// connections, INBOX first. Progress is committed batch by batch, so a
// pass that dies resumes where it stopped.
func (e *Engine) Pass(ctx context.Context, account, password string) (PassResult, error) {
	sess := &legacySession{engine: e, password: password}
	defer sess.close()
	return e.passOn(ctx, sess, account)
}

// passOn runs one sync pass over the session's legacy connection.
func (e *Engine) passOn(ctx context.Context, sess *legacySession, account string) (PassResult, error) {
	var res PassResult
	acct, err := e.Store.Account(ctx, account)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	sess.acct = acct
	if e.IMAP.Address != "" {
		res, err = e.imapPass(ctx, sess)
		if err == nil && e.POP3.Address != "" {
			err = e.mapUIDLsIfNeeded(ctx, acct, sess.password)
		}
	} else {
		res, err = e.pop3Pass(ctx, acct, sess.password)
	}
	if err == nil {
		err = e.copySieve(ctx, acct, sess.password)
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		if kind := legacyclient.Kind(err); kind != "" && !isStoreError(err) {
			e.observer().LegacyError(kind)
		}
		if ctx.Err() == nil {
			e.observer().PassFailed()
		}
		err = fmt.Errorf("capture %s: %w", account, err)
		if rerr := e.Store.RecordSync(context.WithoutCancel(ctx), account, time.Now(), err.Error()); rerr != nil {
			e.log().Error("the error of a capture could not be recorded", "account", account, "err", rerr)
		}
		return res, err
	}
	if err := e.Store.SetLegacySize(ctx, account, res.LegacyMessages, res.LegacyBytes); err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	if err := e.Store.RecordSync(ctx, account, time.Now(), ""); err != nil {
		return res, fmt.Errorf("capture %s: %w", account, err)
	}
	return res, nil
}

// legacySession is the legacy IMAP connection that the passes and the
// verification of one convergence share: each is a login at the legacy
// server, so one is made for each connection actually used, not one per
// pass. A connection a command failed on is dropped; the next use logs in
// again.
type legacySession struct {
	engine   *Engine
	acct     store.Account
	password string
	conn     *imapConn
}

// get returns the session's connection, logging in if it has none.
func (s *legacySession) get(ctx context.Context) (*imapConn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	start := time.Now()
	conn, err := dialIMAP(ctx, s.engine.IMAP, s.engine.credentials(s.acct, s.password))
	if err != nil {
		return nil, err
	}
	if s.engine.OnLatency != nil {
		s.engine.OnLatency(time.Since(start))
	}
	s.conn = conn
	return conn, nil
}

// drop closes the connection after a failed command: what state it was
// left in is not known.
func (s *legacySession) drop() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// close logs out and closes the connection.
func (s *legacySession) close() {
	if s.conn != nil {
		s.conn.Logout().Wait()
		s.drop()
	}
}

// imapPass syncs every folder over IMAP.
func (e *Engine) imapPass(ctx context.Context, sess *legacySession) (PassResult, error) {
	conn, err := sess.get(ctx)
	if err != nil {
		return PassResult{}, err
	}
	res, err := e.pass(ctx, conn, sess.acct, sess.password)
	if err != nil {
		err = conn.classify(ctx, err)
		sess.drop()
		return res, err
	}
	return res, nil
}

// isStoreError tells errors of the local store apart from the legacy
// server's.
func isStoreError(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrReadOnly)
}

// legacyFolder is one folder of the legacy LIST.
type legacyFolder struct {
	name       string
	attrs      []imap.MailboxAttr
	specialUse []string
	subscribed bool
}

// passPlan is what the workers of one pass share: the local mailboxes by
// name and the local mirrors whose legacy folder is gone (renamed or
// deleted), keyed by their legacy UIDVALIDITY.
type passPlan struct {
	acct store.Account
	// uidls, on a first pass with a legacy POP3 server, is its maildrop
	// for INBOX's copies to take their UIDLs from.
	uidls   *uidlHint
	mu      sync.Mutex
	local   map[string]store.Mailbox
	orphans map[uint32]store.Mailbox
}

func (e *Engine) pass(ctx context.Context, conn *imapConn, acct store.Account, password string) (PassResult, error) {
	var res PassResult
	folders, prefix, sep, guessed, err := listFolders(conn)
	if err != nil {
		return res, err
	}
	if acct.LegacyPrefix != prefix || acct.LegacySeparator != sep || acct.SpecialUseGuessed != guessed {
		if err := e.Store.SetLegacyNamespace(ctx, acct.Name, prefix, sep, guessed); err != nil {
			return res, err
		}
	}
	localList, err := e.Store.Mailboxes(ctx, acct.ID)
	if err != nil {
		return res, err
	}
	plan := &passPlan{acct: acct, local: map[string]store.Mailbox{}, orphans: map[uint32]store.Mailbox{}}
	if e.POP3.Address != "" && acct.LastSyncAt.IsZero() {
		plan.uidls = e.readUIDLHint(ctx, acct, password)
		defer plan.uidls.wait()
	}
	for _, m := range localList {
		plan.local[m.Name] = m
	}
	seen := map[string]bool{}
	var selectable []legacyFolder
	for _, f := range folders {
		seen[f.name] = true
		if !hasAttr(f.attrs, imap.MailboxAttrNoSelect) && !hasAttr(f.attrs, imap.MailboxAttrNonExistent) {
			selectable = append(selectable, f)
		}
	}
	for _, m := range localList {
		if !seen[m.Name] && m.LegacyUIDValidity != 0 {
			plan.orphans[m.LegacyUIDValidity] = m
		}
	}
	if acct.LastSyncAt.IsZero() {
		// First pass: measure the legacy mailbox up front, so progress has
		// a denominator while the copy runs.
		if msgs, size, err := legacyTotals(conn, selectable); err == nil {
			if err := e.Store.SetLegacySize(ctx, acct.Name, msgs, size); err != nil {
				return res, err
			}
		}
	}
	res, err = e.syncFolders(ctx, conn, password, plan, selectable)
	if err != nil {
		return res, err
	}
	for _, m := range plan.orphans {
		if err := e.Store.DeleteMailbox(ctx, m.ID); err != nil {
			return res, err
		}
		res.FoldersDeleted++
	}
	return res, nil
}

// syncFolders shares the folders out over up to Connections workers, each
// with its own legacy connection (the first reuses conn) and its own
// background committer. The first error stops them all.
func (e *Engine) syncFolders(ctx context.Context, conn *imapConn, password string, plan *passPlan, folders []legacyFolder) (PassResult, error) {
	var total PassResult
	if len(folders) == 0 {
		return total, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	queue := make(chan legacyFolder, len(folders))
	for _, f := range folders {
		queue <- f
	}
	close(queue)
	workers := min(e.connections(), len(folders))
	firstDone := make(chan struct{})
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if w == 0 {
				defer close(firstDone)
			}
			res, err := e.folderWorker(ctx, w, conn, password, plan, queue, firstDone)
			mu.Lock()
			defer mu.Unlock()
			total.add(res)
			if err != nil && firstErr == nil {
				firstErr = err
				cancel(err)
			}
		}(w)
	}
	wg.Wait()
	return total, firstErr
}

func (e *Engine) folderWorker(ctx context.Context, w int, conn *imapConn, password string, plan *passPlan, queue <-chan legacyFolder, firstDone <-chan struct{}) (PassResult, error) {
	var res PassResult
	var first *legacyFolder
	if w > 0 {
		// An extra connection is a login at the legacy server: it is
		// opened only if folders still wait once the first connection has
		// had a moment (a delta pass over unchanged folders, or a small
		// account, is done with one).
		delay := e.ExtraConnectionDelay
		if delay <= 0 {
			delay = 100 * time.Millisecond
		}
		select {
		case <-time.After(delay):
		case <-firstDone: // the first connection took every folder
			return res, nil
		case <-ctx.Done():
			return res, context.Cause(ctx)
		}
		f, ok := <-queue
		if !ok {
			return res, nil
		}
		first = &f
		var err error
		if conn, err = dialIMAP(ctx, e.IMAP, e.credentials(plan.acct, password)); err != nil {
			return res, err
		}
		defer func() {
			conn.Logout().Wait()
			conn.Close()
		}()
	}
	next := func() (legacyFolder, bool) {
		if first != nil {
			f := *first
			first = nil
			return f, true
		}
		f, ok := <-queue
		return f, ok
	}
	for f, ok := next(); ok; f, ok = next() {
		if err := ctx.Err(); err != nil {
			return res, context.Cause(ctx)
		}
		res.Folders++
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if err = e.syncFolder(ctx, conn, plan, f, &res); !errors.Is(err, errMailboxChanged) {
				break
			}
			e.log().Info("legacy folder changed during sync; syncing it again", "account", plan.acct.Name, "folder", f.name)
			if m, err := e.Store.MailboxByName(ctx, plan.acct.ID, f.name); err == nil {
				plan.mu.Lock()
				plan.local[f.name] = m
				plan.mu.Unlock()
			}
		}
		if err != nil {
			return res, fmt.Errorf("folder %q: %w", f.name, conn.classify(ctx, err))
		}
	}
	return res, nil
}

func (r *PassResult) add(o PassResult) {
	r.Folders += o.Folders
	r.Added += o.Added
	r.AddedBytes += o.AddedBytes
	r.Expunged += o.Expunged
	r.FlagsChanged += o.FlagsChanged
	r.FoldersCreated += o.FoldersCreated
	r.FoldersDeleted += o.FoldersDeleted
	r.FoldersRenamed += o.FoldersRenamed
	r.FoldersRecopied += o.FoldersRecopied
	r.FoldersUnchanged += o.FoldersUnchanged
	r.LegacyMessages += o.LegacyMessages
	r.LegacyBytes += o.LegacyBytes
}

// legacyTotals counts messages (and bytes, where the server has
// STATUS=SIZE) over the folders.
func legacyTotals(conn *imapConn, folders []legacyFolder) (msgs, size int64, err error) {
	withSize := conn.Caps().Has(imap.CapStatusSize) || conn.Caps().Has(imap.CapIMAP4rev2)
	for _, f := range folders {
		st, err := conn.Status(f.name, &imap.StatusOptions{NumMessages: true, Size: withSize}).Wait()
		if err != nil {
			return 0, 0, err
		}
		if st.NumMessages != nil {
			msgs += int64(*st.NumMessages)
		}
		if st.Size != nil {
			size += *st.Size
		}
	}
	return msgs, size, nil
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

// CheckPassword asks the legacy server whether it accepts a password for
// the login name user (the name it is sent, see Naming.LegacyLogin)
// (over IMAP, or POP3 when the legacy server has no IMAP): nil when it
// does, an error wrapping legacyclient.ErrBadCredentials when it refuses it, another
// error when it cannot be asked.
func (e *Engine) CheckPassword(ctx context.Context, user, password string) error {
	cred := legacyclient.User(user, password)
	if e.IMAP.Address == "" {
		c, err := legacyclient.LoginPOP3(ctx, e.POP3, cred)
		if err != nil {
			return err
		}
		c.Quit()
		return nil
	}
	c, err := dialIMAP(ctx, e.IMAP, cred)
	if err != nil {
		return err
	}
	c.Logout().Wait()
	return c.Close()
}
