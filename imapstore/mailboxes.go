package imapstore

import (
	"errors"
	"sort"
	"strconv"
	"strings"

	"mailcapture/imapwire"
	"mailcapture/store"
)

var specialUses = map[string]string{
	`\all`: `\All`, `\archive`: `\Archive`, `\drafts`: `\Drafts`, `\flagged`: `\Flagged`,
	`\junk`: `\Junk`, `\sent`: `\Sent`, `\trash`: `\Trash`, `\important`: `\Important`,
}

// cmdCreate runs CREATE (RFC 3501 6.3.3), with RFC 6154's USE option. A
// trailing separator only says that children are to come; the name is
// created without it, and its missing parents exist as \Noselect names.
func (s *session) cmdCreate() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	name, err := s.mailboxArg()
	if err != nil {
		return err
	}
	var use []string
	if s.r.Peek() == ' ' {
		s.r.SP()
		err := s.r.List(func() error {
			if !s.r.MaybeWord("USE") {
				return bad("unknown CREATE option")
			}
			if err := s.r.SP(); err != nil {
				return err
			}
			return s.r.List(func() error {
				f, err := s.r.Flag(false)
				canon, ok := specialUses[strings.ToLower(f)]
				if err == nil && !ok {
					return no("USEATTR", "%s is not a special-use attribute", f)
				}
				use = append(use, canon)
				return err
			})
		})
		if err != nil {
			return err
		}
	}
	if err := s.end(); err != nil {
		return err
	}
	sep := s.separator()
	name = strings.TrimSuffix(name, sep)
	if err := validName(name, sep); err != nil {
		return err
	}
	if name == "INBOX" {
		return no("ALREADYEXISTS", "mailbox already exists")
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	_, err = s.srv.store.CreateMailbox(ctx, s.acct.ID, store.MailboxSpec{Name: name, SpecialUse: use})
	if errors.Is(err, store.ErrExists) {
		return no("ALREADYEXISTS", "mailbox already exists")
	}
	return err
}

// validName refuses names no client can use: empty, with an empty level
// ("a//b") or with control characters.
func validName(name, sep string) error {
	if name == "" {
		return no("CANNOT", "empty mailbox name")
	}
	for _, level := range strings.Split(name, sep) {
		if level == "" {
			return no("CANNOT", "invalid mailbox name: empty hierarchy level")
		}
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] == 0x7f {
			return no("CANNOT", "invalid mailbox name: control character")
		}
	}
	return nil
}

// cmdDelete runs DELETE (RFC 3501 6.3.4). A mailbox with children may be
// deleted: its name stays, as \Noselect, while they exist.
func (s *session) cmdDelete() error {
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
	if name == "INBOX" {
		return no("CANNOT", "INBOX cannot be deleted")
	}
	mb, err := s.lookup(name)
	if err != nil {
		return err
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	return s.srv.store.DeleteMailbox(ctx, mb.ID)
}

// cmdRename runs RENAME (RFC 3501 6.3.5): children move with their parent;
// renaming INBOX moves its messages into the new mailbox and leaves INBOX
// empty.
func (s *session) cmdRename() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	from, err := s.mailboxArg()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	to, err := s.mailboxArg()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	sep := s.separator()
	to = strings.TrimSuffix(to, sep)
	if err := validName(to, sep); err != nil {
		return err
	}
	if to == "INBOX" {
		return no("ALREADYEXISTS", "mailbox already exists")
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	if from == "INBOX" {
		inbox, err := s.lookup("INBOX")
		if err != nil {
			return err
		}
		dest, err := s.srv.store.CreateMailbox(ctx, s.acct.ID, store.MailboxSpec{Name: to})
		if errors.Is(err, store.ErrExists) {
			return no("ALREADYEXISTS", "mailbox already exists")
		}
		if err != nil {
			return err
		}
		uids, err := s.srv.store.UIDs(ctx, inbox.ID)
		if err != nil {
			return err
		}
		_, err = s.srv.store.Move(ctx, inbox.ID, uids, dest.ID)
		return err
	}
	err = s.srv.store.RenameMailbox(ctx, s.acct.ID, from, to, sep)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return no("NONEXISTENT", "mailbox doesn't exist: %s", imapwire.EncodeUTF7(from))
	case errors.Is(err, store.ErrExists):
		return no("ALREADYEXISTS", "mailbox already exists")
	}
	return err
}

func (s *session) cmdSubscribe() error   { return s.subscribe(true) }
func (s *session) cmdUnsubscribe() error { return s.subscribe(false) }

// subscribe runs SUBSCRIBE and UNSUBSCRIBE: any valid name may be
// subscribed, whether a mailbox has it or not (RFC 3501 6.3.6 allows a
// server to check, and does not require it).
func (s *session) subscribe(on bool) error {
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
	name = strings.TrimSuffix(name, s.separator())
	if err := validName(name, s.separator()); err != nil {
		return err
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	return s.srv.store.SetSubscribed(ctx, s.acct.ID, name, on)
}

// statusItems are the STATUS data items asked for, in the client's
// order.
type statusItems []string

var knownStatusItems = map[string]bool{
	"MESSAGES": true, "RECENT": true, "UIDNEXT": true, "UIDVALIDITY": true, "UNSEEN": true,
	"DELETED": true, "SIZE": true, "APPENDLIMIT": true,
}

var statusOrder = map[string]int{"MESSAGES": 0, "RECENT": 1, "UIDNEXT": 2, "UIDVALIDITY": 3, "UNSEEN": 4, "DELETED": 5, "SIZE": 6, "APPENDLIMIT": 7}

func (s *session) statusItemsArg() (statusItems, error) {
	var items statusItems
	err := s.r.List(func() error {
		a, err := s.r.AtomUpper()
		if err != nil {
			return err
		}
		if !knownStatusItems[a] {
			return bad("unknown STATUS item %s", a)
		}
		items = append(items, a)
		return nil
	})
	if err == nil && len(items) == 0 {
		err = bad("STATUS needs at least one item")
	}
	return items, err
}

// cmdStatus runs STATUS (RFC 3501 6.3.10, RFC 8438 SIZE, RFC 9051 DELETED,
// RFC 7889 APPENDLIMIT).
func (s *session) cmdStatus() error {
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
	items, err := s.statusItemsArg()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	mb, err := s.lookup(name)
	if err != nil {
		return err
	}
	return s.writeStatus(mb, items)
}

// mailboxCounts is what STATUS can report.
type mailboxCounts struct {
	messages, recent, unseen, deleted uint32
	size                              int64
}

// counts reports a mailbox's counts: from its shared state when a session
// has it (exact to the last commit), else from the store.
func (s *session) counts(mb store.Mailbox) (mailboxCounts, error) {
	var c mailboxCounts
	s.srv.mu.Lock()
	m := s.srv.mailboxes[mb.ID]
	s.srv.mu.Unlock()
	if m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		c.messages = uint32(len(m.msgs))
		c.recent = m.recentCount()
		for _, mi := range m.msgs {
			if !hasFlag(mi.flags, `\Seen`) {
				c.unseen++
			}
			if hasFlag(mi.flags, `\Deleted`) {
				c.deleted++
			}
			c.size += mi.size
		}
		return c, nil
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	st, err := s.srv.store.Status(ctx, mb.ID, s.srv.recentBoundary(mb))
	if err != nil {
		return c, err
	}
	return mailboxCounts{messages: st.Messages, recent: st.Recent, unseen: st.Unseen, deleted: st.Deleted, size: st.Size}, nil
}

func (s *session) writeStatus(mb store.Mailbox, items statusItems) error {
	c, err := s.counts(mb)
	if err != nil {
		return err
	}
	s.out = append(s.out[:0], "* STATUS "...)
	s.out = appendName(s.out, mb.Name)
	s.out = append(s.out, " ("...)
	// In Dovecot's order, whatever the order asked.
	sort.SliceStable(items, func(i, j int) bool { return statusOrder[items[i]] < statusOrder[items[j]] })
	for i, item := range items {
		if i > 0 {
			s.out = append(s.out, ' ')
		}
		s.out = append(s.out, item...)
		s.out = append(s.out, ' ')
		switch item {
		case "MESSAGES":
			s.out = strconv.AppendUint(s.out, uint64(c.messages), 10)
		case "RECENT":
			s.out = strconv.AppendUint(s.out, uint64(c.recent), 10)
		case "UIDNEXT":
			s.out = strconv.AppendUint(s.out, uint64(mb.UIDNext), 10)
		case "UIDVALIDITY":
			s.out = strconv.AppendUint(s.out, uint64(mb.UIDValidity), 10)
		case "UNSEEN":
			s.out = strconv.AppendUint(s.out, uint64(c.unseen), 10)
		case "DELETED":
			s.out = strconv.AppendUint(s.out, uint64(c.deleted), 10)
		case "SIZE":
			s.out = strconv.AppendInt(s.out, c.size, 10)
		case "APPENDLIMIT":
			s.out = strconv.AppendUint(s.out, AppendLimit, 10)
		}
	}
	s.out = append(s.out, ")\r\n"...)
	s.w.Write(s.out)
	return nil
}
