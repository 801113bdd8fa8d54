package imapstore

import (
	"errors"
	"io"
	"time"

	"mailcapture/imapwire"
)

func (s *session) cmdExpunge() error {
	if err := s.end(); err != nil {
		return err
	}
	if s.sel.readOnly {
		s.okText = "Expunge ignored with read-only mailbox" // as Dovecot answers
		return nil
	}
	return s.expungeDeleted(nil)
}

// cmdUIDExpunge runs RFC 4315 UID EXPUNGE: only \Deleted messages whose
// UIDs are in the set.
func (s *session) cmdUIDExpunge() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	set, err := s.r.SeqSet()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	if s.sel.readOnly {
		s.okText = "Expunge ignored with read-only mailbox"
		return nil
	}
	targets, err := s.resolve(set, true)
	if err != nil {
		return err
	}
	in := map[uint32]bool{}
	for _, t := range targets {
		in[t.uid] = true
	}
	return s.expungeDeleted(in)
}

// expungeDeleted removes the mailbox's \Deleted messages (only those in
// only, when given). The EXPUNGE responses come from the view's updates.
func (s *session) expungeDeleted(only map[uint32]bool) error {
	m := s.sel.mb
	var uids []uint32
	m.mu.Lock()
	for _, mi := range m.msgs {
		if hasFlag(mi.flags, `\Deleted`) && (only == nil || only[mi.uid]) {
			uids = append(uids, mi.uid)
		}
	}
	m.mu.Unlock()
	if len(uids) == 0 {
		return nil
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	_, err := s.srv.store.Expunge(ctx, m.id, uids)
	return err
}

func (s *session) cmdCopy() error    { return s.copyMessages(false, false) }
func (s *session) cmdUIDCopy() error { return s.copyMessages(true, false) }
func (s *session) cmdMove() error    { return s.copyMessages(false, true) }
func (s *session) cmdUIDMove() error { return s.copyMessages(true, true) }

// copyMessages runs COPY (RFC 3501 6.4.7) and MOVE (RFC 6851), with
// RFC 4315 COPYUID; MOVE's EXPUNGE responses follow its untagged COPYUID.
func (s *session) copyMessages(byUID, move bool) error {
	if err := s.r.SP(); err != nil {
		return err
	}
	set, err := s.r.SeqSet()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	name, err := s.mailboxArg()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	if move && s.sel.readOnly {
		return no("READ-ONLY", "mailbox is read-only")
	}
	targets, err := s.resolve(set, byUID)
	if err != nil {
		return err
	}
	dest, err := s.lookup(name)
	if err != nil {
		return no("TRYCREATE", "mailbox doesn't exist: %s", imapwire.EncodeUTF7(name))
	}
	var live []uint32
	for _, t := range targets {
		if s.sel.stored(t.uid) {
			live = append(live, t.uid)
		}
	}
	if len(targets) > 0 && len(live) == 0 {
		return no("EXPUNGEISSUED", "some of the requested messages no longer exist")
	}
	if len(live) == 0 {
		return nil
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	op := s.srv.store.Copy
	if move {
		op = s.srv.store.Move
	}
	res, err := op(ctx, s.sel.mb.id, live, dest.ID)
	if err != nil {
		return err
	}
	if len(res.SourceUIDs) == 0 {
		return no("EXPUNGEISSUED", "some of the requested messages no longer exist")
	}
	code := "COPYUID " + formatUint(res.DestUIDValidity) + " " +
		string(imapwire.AppendSet(nil, res.SourceUIDs)) + " " + string(imapwire.AppendSet(nil, res.DestUIDs))
	if move {
		s.untagged("OK [" + code + "] Moved UIDs.")
		return nil
	}
	s.okCode = code
	return nil
}

// cmdAppend runs APPEND (RFC 3501 6.3.11) with RFC 4315 APPENDUID and
// RFC 7889 APPENDLIMIT. The message streams from the connection into the
// store; a refused one is not asked for (synchronising literal) or is
// read and dropped (LITERAL+).
func (s *session) cmdAppend() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	name, err := s.mailboxArg()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	var flags []string
	if s.r.Peek() == '(' {
		raw, err := s.r.FlagList(true)
		if err != nil {
			return err
		}
		if flags, err = flagsArg(raw); err != nil {
			return err
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	date := time.Now()
	if s.r.Peek() == '"' {
		if date, err = s.r.DateTime(); err != nil {
			return err
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	n, _, ok := s.r.LiteralNext()
	if !ok {
		return bad("APPEND needs the message as a literal")
	}
	refuse := func(err error) error {
		if serr := s.r.SkipLiteral(); serr != nil {
			return serr
		}
		return err
	}
	mb, err := s.lookup(name)
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return refuse(no("TRYCREATE", "mailbox doesn't exist: %s", imapwire.EncodeUTF7(name)))
		}
		return refuse(err)
	}
	if n > AppendLimit {
		return refuse(no("TOOBIG", "message over the %d-byte limit", AppendLimit))
	}
	if n == 0 {
		return refuse(no("CANNOT", "empty message"))
	}
	body, _, err := s.r.LiteralReader()
	if err != nil {
		return err
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	ins, aerr := s.srv.store.Append(ctx, mb.ID, body, flags, date)
	// Whatever happened, the literal is read to its end: the next line is
	// the rest of the command.
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err
	}
	if err := s.r.Resume(); err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	if aerr != nil {
		return aerr
	}
	s.okCode = "APPENDUID " + formatUint(mb.UIDValidity) + " " + formatUint(ins.UID)
	return nil
}

func formatUint(n uint32) string { return string(imapwire.AppendSet(nil, []uint32{n})) }
