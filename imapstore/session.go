package imapstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/store"
)

// Session is one client's session over the store. It implements
// imapserver.Session, SessionIMAP4rev2 and SessionAppendLimit.
type Session struct {
	b    *Backend
	acct *store.Account
	sel  *selected
	// raw, if set, is the connection under imapserver, which metadata-only
	// FETCH answers are written to directly (see fetchMetadata).
	raw io.Writer
}

// selected is the mailbox a session has selected.
type selected struct {
	mbox     store.Mailbox
	state    *mailboxState
	tracker  *imapserver.SessionTracker
	readOnly bool
}

var (
	_ imapserver.SessionIMAP4rev2   = (*Session)(nil)
	_ imapserver.SessionAppendLimit = (*Session)(nil)
)

// NewSession starts a session; account is nil until Login, or set for a
// session that the front end authenticated already. raw, if not nil, is
// the connection imapserver writes to, for the fast path of metadata-only
// FETCH: it must stay the connection for the whole session (no STARTTLS
// inside imapserver) and carry nothing but imapserver's output.
func (b *Backend) NewSession(account *store.Account, raw io.Writer) *Session {
	return &Session{b: b, acct: account, raw: raw}
}

func (s *Session) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

// Close ends the session.
func (s *Session) Close() error {
	s.unselect()
	return nil
}

// Login checks the password against the stored hash of a captured account.
func (s *Session) Login(username, password string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	ok, err := s.b.Store.VerifyPassword(ctx, username, password)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !ok) {
		return imapserver.ErrAuthFailed
	}
	if err != nil {
		return s.internal("login", err)
	}
	acct, err := s.b.Store.Account(ctx, username)
	if err != nil {
		return s.internal("login", err)
	}
	if acct.State != store.StateCaptured {
		return imapserver.ErrAuthFailed
	}
	s.acct = &acct
	return nil
}

// internal logs err and returns a generic IMAP error.
func (s *Session) internal(what string, err error) error {
	s.b.Log.Error("imap "+what, "err", err)
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeServerBug, Text: "internal error, try again later"}
}

func noSuchMailbox(name string) error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: fmt.Sprintf("no mailbox %q", name)}
}

func (s *Session) separator() rune {
	if s.acct.LegacySeparator == "" {
		return '/'
	}
	return rune(s.acct.LegacySeparator[0])
}

// Namespace returns the legacy server's personal namespace.
func (s *Session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: s.acct.LegacyPrefix, Delim: s.separator()}}}, nil
}

// AppendLimit implements imapserver.SessionAppendLimit.
func (s *Session) AppendLimit() uint32 { return AppendLimit }

func (s *Session) mailbox(ctx context.Context, name string) (store.Mailbox, error) {
	m, err := s.b.Store.MailboxByName(ctx, s.acct.ID, name)
	if errors.Is(err, store.ErrNotFound) {
		return m, noSuchMailbox(name)
	}
	if err != nil {
		return m, s.internal("mailbox", err)
	}
	return m, nil
}

// List writes the mailboxes matching the patterns, with their special-use
// attributes (also on a plain LIST, as Dovecot does), \HasChildren or
// \HasNoChildren, \Subscribed when asked, STATUS when asked, and parents
// that hold no messages as \Noselect.
func (s *Session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	ctx, cancel := s.ctx()
	defer cancel()
	delim := s.separator()
	if len(patterns) == 1 && patterns[0] == "" {
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: delim, Mailbox: ""})
	}
	boxes, err := s.b.Store.Mailboxes(ctx, s.acct.ID)
	if err != nil {
		return s.internal("list", err)
	}
	exists := map[string]*store.Mailbox{}
	names := map[string]bool{}
	for i := range boxes {
		exists[boxes[i].Name] = &boxes[i]
		names[boxes[i].Name] = true
		// Parents of nested names exist for LIST, as \Noselect.
		parts := strings.Split(boxes[i].Name, string(delim))
		for n := 1; n < len(parts); n++ {
			names[strings.Join(parts[:n], string(delim))] = true
		}
	}
	hasChildren := map[string]bool{}
	for name := range names {
		if i := strings.LastIndex(name, string(delim)); i > 0 {
			hasChildren[name[:i]] = true
		}
	}
	extended := options.SelectSubscribed || options.SelectSpecialUse || options.SelectRemote || options.ReturnSubscribed ||
		options.ReturnChildren || options.ReturnStatus != nil || options.ReturnSpecialUse
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		if !matchesAny(name, delim, ref, patterns) {
			continue
		}
		mb := exists[name]
		if options.SelectSubscribed && (mb == nil || !mb.Subscribed) {
			continue
		}
		if options.SelectSpecialUse && (mb == nil || len(mb.SpecialUse) == 0) {
			continue
		}
		data := &imap.ListData{Delim: delim, Mailbox: name}
		if hasChildren[name] {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
		} else {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if mb == nil {
			// A parent that exists only as part of its children's names.
			// Extended LIST says \NonExistent (RFC 5258 3.4), as Dovecot.
			if extended {
				data.Attrs = append(data.Attrs, imap.MailboxAttrNonExistent)
			} else {
				data.Attrs = append(data.Attrs, imap.MailboxAttrNoSelect)
			}
		} else {
			for _, su := range mb.SpecialUse {
				data.Attrs = append(data.Attrs, imap.MailboxAttr(su))
			}
			if mb.Subscribed && (options.ReturnSubscribed || options.SelectSubscribed) {
				data.Attrs = append(data.Attrs, imap.MailboxAttrSubscribed)
			}
			if options.ReturnStatus != nil {
				st, err := s.status(ctx, *mb, options.ReturnStatus)
				if err != nil {
					return err
				}
				data.Status = st
			}
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}

func matchesAny(name string, delim rune, ref string, patterns []string) bool {
	for _, p := range patterns {
		if imapserver.MatchList(name, delim, ref, p) {
			return true
		}
	}
	return false
}

// Status reports a mailbox's counters.
func (s *Session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	mb, err := s.mailbox(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.status(ctx, mb, options)
}

func (s *Session) status(ctx context.Context, mb store.Mailbox, options *imap.StatusOptions) (*imap.StatusData, error) {
	st, err := s.b.Store.Status(ctx, mb.ID)
	if err != nil {
		return nil, s.internal("status", err)
	}
	data := &imap.StatusData{Mailbox: mb.Name}
	if options.NumMessages {
		data.NumMessages = &st.Messages
	}
	if options.UIDNext {
		data.UIDNext = imap.UID(st.UIDNext)
	}
	if options.UIDValidity {
		data.UIDValidity = st.UIDValidity
	}
	if options.NumUnseen {
		data.NumUnseen = &st.Unseen
	}
	if options.NumDeleted {
		data.NumDeleted = &st.Deleted
	}
	if options.Size {
		data.Size = &st.Size
	}
	if options.AppendLimit {
		limit := uint32(AppendLimit)
		data.AppendLimit = &limit
	}
	return data, nil
}

// Create creates a mailbox with a fresh UIDVALIDITY.
func (s *Session) Create(name string, options *imap.CreateOptions) error {
	ctx, cancel := s.ctx()
	defer cancel()
	name = strings.TrimSuffix(name, string(s.separator()))
	var specialUse []string
	if options != nil {
		specialUse = fromAttrs(options.SpecialUse)
	}
	_, err := s.b.Store.CreateMailbox(ctx, s.acct.ID, store.MailboxSpec{Name: name, SpecialUse: specialUse})
	if errors.Is(err, store.ErrExists) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "mailbox exists"}
	}
	if err != nil {
		return s.internal("create", err)
	}
	return nil
}

func fromAttrs(attrs []imap.MailboxAttr) []string {
	out := make([]string, len(attrs))
	for i, a := range attrs {
		out[i] = string(a)
	}
	return out
}

// Delete removes a mailbox and its messages; INBOX cannot be deleted.
func (s *Session) Delete(name string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	if strings.EqualFold(name, "INBOX") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "INBOX cannot be deleted"}
	}
	mb, err := s.mailbox(ctx, name)
	if err != nil {
		return err
	}
	if err := s.b.Store.DeleteMailbox(ctx, mb.ID); err != nil {
		return s.internal("delete", err)
	}
	return nil
}

// Rename renames a mailbox and its children. Renaming INBOX moves its
// messages into a new mailbox (RFC 3501 6.3.5).
func (s *Session) Rename(name, newName string, options *imap.RenameOptions) error {
	ctx, cancel := s.ctx()
	defer cancel()
	if strings.EqualFold(name, "INBOX") {
		inbox, err := s.mailbox(ctx, "INBOX")
		if err != nil {
			return err
		}
		dest, err := s.b.Store.CreateMailbox(ctx, s.acct.ID, store.MailboxSpec{Name: newName})
		if errors.Is(err, store.ErrExists) {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "mailbox exists"}
		}
		if err != nil {
			return s.internal("rename", err)
		}
		uids, err := s.b.Store.UIDs(ctx, inbox.ID)
		if err != nil {
			return s.internal("rename", err)
		}
		if _, err := s.b.Store.Move(ctx, inbox.ID, uids, dest.ID); err != nil {
			return s.internal("rename", err)
		}
		return nil
	}
	err := s.b.Store.RenameMailbox(ctx, s.acct.ID, name, newName, string(s.separator()))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return noSuchMailbox(name)
	case errors.Is(err, store.ErrExists):
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "mailbox exists"}
	case err != nil:
		return s.internal("rename", err)
	}
	return nil
}

// Subscribe marks a mailbox subscribed.
func (s *Session) Subscribe(name string) error { return s.subscribe(name, true) }

// Unsubscribe clears a mailbox's subscription.
func (s *Session) Unsubscribe(name string) error { return s.subscribe(name, false) }

func (s *Session) subscribe(name string, on bool) error {
	ctx, cancel := s.ctx()
	defer cancel()
	err := s.b.Store.SetSubscribed(ctx, s.acct.ID, name, on)
	if errors.Is(err, store.ErrNotFound) {
		return noSuchMailbox(name)
	}
	if err != nil {
		return s.internal("subscribe", err)
	}
	return nil
}

// Select opens a mailbox (EXAMINE: read-only).
func (s *Session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	s.unselect()
	mb, err := s.mailbox(ctx, name)
	if err != nil {
		return nil, err
	}
	state, err := s.b.open(ctx, mb.ID)
	if err != nil {
		return nil, s.internal("select", err)
	}
	state.mu.Lock()
	n := uint32(len(state.uids))
	tracker := state.tracker.NewSession()
	state.mu.Unlock()
	s.sel = &selected{mbox: mb, state: state, tracker: tracker, readOnly: options != nil && options.ReadOnly}
	// UIDNEXT read after the view was taken, so it is above every UID
	// in it; the mailbox row is enough (no count over its messages).
	now, err := s.b.Store.MailboxByID(ctx, mb.ID)
	if err != nil {
		return nil, s.internal("select", err)
	}
	flags := []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft}
	return &imap.SelectData{
		Flags:          flags,
		PermanentFlags: append(flags, imap.FlagWildcard),
		NumMessages:    n,
		UIDNext:        imap.UID(now.UIDNext),
		UIDValidity:    now.UIDValidity,
	}, nil
}

// Unselect closes the selected mailbox without expunging.
func (s *Session) Unselect() error {
	s.unselect()
	return nil
}

func (s *Session) unselect() {
	if s.sel == nil {
		return
	}
	s.sel.tracker.Close()
	s.b.release(s.sel.mbox.ID, s.sel.state)
	s.sel = nil
}

// Poll writes pending updates of the selected mailbox.
func (s *Session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.sel == nil {
		return nil
	}
	return s.sel.tracker.Poll(w, allowExpunge)
}

// Idle writes updates as they come until stop is closed.
func (s *Session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if s.sel == nil {
		<-stop
		return nil
	}
	return s.sel.tracker.Idle(w, stop)
}
