package imapstore

import (
	"errors"
	"strconv"

	"mailcapture/imapwire"
	"mailcapture/store"
)

// systemFlags are the flags every mailbox has, in the order Dovecot
// writes them.
var systemFlags = []string{`\Answered`, `\Flagged`, `\Deleted`, `\Seen`, `\Draft`}

// mailboxArg reads a mailbox name: modified UTF-7 on the wire, UTF-8 in
// the store; INBOX in any case is INBOX (RFC 3501 5.1).
func (s *session) mailboxArg() (string, error) {
	raw, err := s.r.Astring()
	if err != nil {
		return "", err
	}
	return decodeMailbox(raw)
}

func decodeMailbox(raw string) (string, error) {
	name, err := imapwire.DecodeUTF7(raw)
	if err != nil {
		return "", no("CANNOT", "mailbox name %q is not valid modified UTF-7 (RFC 3501 5.1.3)", raw)
	}
	return canonicalName(name), nil
}

func canonicalName(name string) string {
	if len(name) == 5 && (name[0]|0x20) == 'i' && (name[1]|0x20) == 'n' && (name[2]|0x20) == 'b' && (name[3]|0x20) == 'o' && (name[4]|0x20) == 'x' {
		return "INBOX"
	}
	return name
}

// lookup finds one of the account's mailboxes by name.
func (s *session) lookup(name string) (store.Mailbox, error) {
	ctx, cancel := s.opCtx()
	defer cancel()
	mb, err := s.srv.store.MailboxByName(ctx, s.acct.ID, name)
	if errors.Is(err, store.ErrNotFound) {
		return mb, no("NONEXISTENT", "mailbox doesn't exist: %s", imapwire.EncodeUTF7(name))
	}
	return mb, err
}

func (s *session) cmdSelect() error  { return s.selectMailbox(false) }
func (s *session) cmdExamine() error { return s.selectMailbox(true) }

// selectMailbox runs SELECT and EXAMINE (RFC 3501 6.3.1, 6.3.2). A SELECT
// that fails leaves no mailbox selected.
func (s *session) selectMailbox(readOnly bool) error {
	if err := s.r.SP(); err != nil {
		return err
	}
	name, err := s.mailboxArg()
	if err != nil {
		s.releaseView()
		return err
	}
	if s.r.Peek() == ' ' {
		// RFC 4466 select parameters: none is offered (no CONDSTORE).
		s.r.SP()
		err := s.r.List(func() error {
			p, err := s.r.Atom()
			if err == nil {
				err = bad("SELECT parameter %s is not supported", p)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	if err := s.end(); err != nil {
		return err
	}
	if s.sel != nil {
		// RFC 7162 3.2.11, RFC 9051 7.1: the mailbox selected before is
		// closed first (and said so, as Dovecot does).
		s.releaseView()
		s.untagged("OK [CLOSED] Previous mailbox closed.")
	}
	mb, err := s.lookup(name)
	if err != nil {
		return err
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	m, err := s.srv.open(ctx, mb.ID)
	if err != nil {
		return err
	}
	v := &view{mb: m, readOnly: readOnly, recent: map[uint32]bool{}, gone: map[uint32]msgInfo{}, notify: make(chan struct{}, 1)}
	m.mu.Lock()
	v.uids = make([]uint32, len(m.msgs))
	firstUnseen := 0
	for i, mi := range m.msgs {
		v.uids[i] = mi.uid
		if firstUnseen == 0 && !hasFlag(mi.flags, `\Seen`) {
			firstUnseen = i + 1
		}
	}
	// EXAMINE shows \Recent but takes it from nobody (RFC 3501 6.3.2).
	var recent []uint32
	if readOnly {
		i := len(m.msgs) - int(m.recentCount())
		for _, mi := range m.msgs[i:] {
			recent = append(recent, mi.uid)
		}
	} else {
		recent = m.claimRecent()
	}
	for _, u := range recent {
		v.recent[u] = true
	}
	keywords := m.keywords
	m.views = append(m.views, v)
	m.mu.Unlock()
	s.sel = v
	if !readOnly && len(recent) > 0 {
		s.srv.noteRecent(m.id, recent[len(recent)-1]+1)
	}
	// UIDNEXT read after the view was taken, so it is above every UID in
	// it.
	now, err := s.srv.store.MailboxByID(ctx, mb.ID)
	if err != nil {
		return err
	}
	s.writeFlags(keywords)
	v.existsSent, v.recentSent = len(v.uids), len(v.recent)
	s.out = strconv.AppendInt(append(s.out[:0], "* "...), int64(len(v.uids)), 10)
	s.out = append(s.out, " EXISTS\r\n* "...)
	s.out = strconv.AppendInt(s.out, int64(len(v.recent)), 10)
	s.out = append(s.out, " RECENT\r\n"...)
	if firstUnseen > 0 {
		s.out = strconv.AppendInt(append(s.out, "* OK [UNSEEN "...), int64(firstUnseen), 10)
		s.out = append(s.out, "] First unseen.\r\n"...)
	}
	s.out = strconv.AppendUint(append(s.out, "* OK [UIDVALIDITY "...), uint64(now.UIDValidity), 10)
	s.out = append(s.out, "] UIDs valid\r\n"...)
	s.out = strconv.AppendUint(append(s.out, "* OK [UIDNEXT "...), uint64(now.UIDNext), 10)
	s.out = append(s.out, "] Predicted next UID\r\n"...)
	s.w.Write(s.out)
	if readOnly {
		s.okCode, s.okText = "READ-ONLY", "Examine completed"
	} else {
		s.okCode, s.okText = "READ-WRITE", "Select completed"
	}
	return nil
}

// writeFlags tells the client which flags the mailbox has (FLAGS) and
// which it may set (PERMANENTFLAGS), keywords included: a client must
// hear of a keyword before a FETCH shows it (RFC 3501 7.2.6).
func (s *session) writeFlags(keywords []string) {
	v := s.sel
	v.knownKeywords = keywords
	s.out = append(s.out[:0], "* FLAGS ("...)
	s.out = appendFlagNames(s.out, keywords, false)
	s.out = append(s.out, ")\r\n* OK [PERMANENTFLAGS ("...)
	if !v.readOnly {
		s.out = appendFlagNames(s.out, keywords, true)
	}
	s.out = append(s.out, ")] Flags permitted.\r\n"...)
	s.w.Write(s.out)
}

func appendFlagNames(buf []byte, keywords []string, wildcard bool) []byte {
	for i, f := range systemFlags {
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = append(buf, f...)
	}
	for _, k := range keywords {
		buf = append(buf, ' ')
		buf = append(buf, k...)
	}
	if wildcard {
		buf = append(buf, ` \*`...)
	}
	return buf
}

// cmdClose runs CLOSE: the \Deleted messages are expunged without
// EXPUNGE responses (RFC 3501 6.4.2), unless the mailbox was examined:
// then nothing is expunged and CLOSE is like UNSELECT.
func (s *session) cmdClose() error {
	if err := s.end(); err != nil {
		return err
	}
	if !s.sel.readOnly {
		if err := s.expungeDeleted(nil); err != nil {
			return err
		}
	}
	s.releaseView()
	return nil
}

func (s *session) cmdUnselect() error {
	if err := s.end(); err != nil {
		return err
	}
	s.releaseView()
	return nil
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if len(x) == len(f) && (x == f || equalFold(x, f)) {
			return true
		}
	}
	return false
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}
