package imapstore

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"mailcapture/store"
)

// msgInfo is what a session serves of a message without reading it: the
// store's metadata, kept current by the change hook.
type msgInfo struct {
	uid   uint32
	id    int64
	size  int64
	date  time.Time
	flags []string // never changed in place, only replaced
}

// mailbox is the state the sessions that select a mailbox share: its
// messages' metadata, the \Recent boundary, its keywords and the views
// of the sessions that have it selected. The store's change hook keeps it
// current under the store's writer lock, in commit order, and queues each
// change to every view: a session's view moves only when the session
// tells its client (RFC 3501 5.5, 7.4.1).
//
// Lock order: the store's writer lock, then mu. A session never calls the
// store while holding mu.
type mailbox struct {
	id int64

	mu   sync.Mutex
	msgs []msgInfo // by UID
	// recentUID is the first UID not yet given as \Recent to a session.
	recentUID uint32
	// keywords lists every keyword the mailbox's messages have had since
	// the state was loaded, in the order they appeared.
	keywords []string
	views    []*view // in the order they selected the mailbox
	refs     int     // views, plus callers holding the state
	released time.Time
	deleted  bool
}

// find returns the index of uid in msgs, or -1.
func (m *mailbox) find(uid uint32) int {
	i, ok := slices.BinarySearchFunc(m.msgs, uid, func(mi msgInfo, u uint32) int { return cmp.Compare(mi.uid, u) })
	if !ok {
		return -1
	}
	return i
}

// addKeywords records keywords not seen before and reports whether any
// was new.
func (m *mailbox) addKeywords(flags []string) bool {
	added := false
	for _, f := range flags {
		if isKeyword(f) && !containsFold(m.keywords, f) {
			m.keywords = append(m.keywords, f)
			added = true
		}
	}
	return added
}

func isKeyword(f string) bool { return f != "" && f[0] != '\\' }

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// updateKind says what an update tells a view.
type updateKind int

const (
	updAdded updateKind = iota
	updExpunged
	updFlags
)

// update is one change queued to a view.
type update struct {
	kind updateKind
	// added: the new messages' UIDs; recent: they are \Recent in this view.
	uids   []uint32
	recent bool
	// flags: a message's new flags; own: the view's session made the
	// change and answers for it itself.
	uid   uint32
	flags []string
	own   bool
}

// apply is the store's change hook: it runs under the writer lock, in
// commit order, for every mailbox.
func (srv *Server) apply(c store.Change) {
	srv.mu.Lock()
	m := srv.mailboxes[c.MailboxID]
	if m != nil && c.Kind == store.MailboxDeleted {
		// Its id may be given to a new mailbox: the state must not outlive
		// it (views that have it keep their pointer and see it empty).
		delete(srv.mailboxes, c.MailboxID)
		if m.refs == 0 {
			srv.idle--
		}
	}
	srv.mu.Unlock()
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch c.Kind {
	case store.MessagesAdded:
		m.added(c)
	case store.MessagesExpunged, store.MailboxDeleted:
		m.expunged(srv.store, c.UIDs)
		m.deleted = c.Kind == store.MailboxDeleted
	case store.FlagsChanged:
		for _, f := range c.Flags {
			if i := m.find(f.UID); i >= 0 {
				m.msgs[i].flags = f.Flags
			}
			m.addKeywords(f.Flags)
			for _, v := range m.views {
				v.queue(update{kind: updFlags, uid: f.UID, flags: f.Flags, own: c.Origin == v})
			}
		}
	}
}

// added takes in new messages. They are \Recent for one session only
// (RFC 3501 2.3.2): the one that added them if it has the mailbox selected
// read-write, else the first read-write one; with none, the next session
// to select the mailbox gets them.
func (m *mailbox) added(c store.Change) {
	last := uint32(0)
	for _, a := range c.Added {
		info := msgInfo{uid: a.UID, id: a.ID, size: a.Size, date: a.InternalDate, flags: a.Flags}
		if n := len(m.msgs); n == 0 || m.msgs[n-1].uid < a.UID {
			m.msgs = append(m.msgs, info)
		} else if i, found := slices.BinarySearchFunc(m.msgs, a.UID, func(mi msgInfo, u uint32) int { return cmp.Compare(mi.uid, u) }); !found {
			m.msgs = slices.Insert(m.msgs, i, info)
		}
		m.addKeywords(a.Flags)
		last = max(last, a.UID)
	}
	var claimant *view
	for _, v := range m.views {
		if v.readOnly {
			continue
		}
		if v == c.Origin {
			claimant = v
			break
		}
		if claimant == nil {
			claimant = v
		}
	}
	if claimant != nil && last >= m.recentUID {
		m.recentUID = last + 1
	}
	for _, v := range m.views {
		v.queue(update{kind: updAdded, uids: c.UIDs, recent: v == claimant})
	}
}

// expunged drops messages. Views keep showing them until their sessions
// tell their clients, so their bodies are pinned on disk until then.
func (m *mailbox) expunged(st *store.Store, uids []uint32) {
	gone := make([]msgInfo, 0, len(uids))
	for _, u := range uids {
		if i := m.find(u); i >= 0 {
			gone = append(gone, m.msgs[i])
		}
	}
	if len(gone) == 0 {
		return
	}
	drop := map[uint32]bool{}
	for _, g := range gone {
		drop[g.uid] = true
	}
	m.msgs = slices.DeleteFunc(m.msgs, func(mi msgInfo) bool { return drop[mi.uid] })
	for _, v := range m.views {
		var pinned []int64
		var shown []uint32
		for _, g := range gone {
			if v.shows(g.uid) {
				v.gone[g.uid] = g
				pinned = append(pinned, g.id)
				shown = append(shown, g.uid)
			}
		}
		if len(shown) == 0 {
			continue
		}
		st.PinBodies(pinned)
		v.queue(update{kind: updExpunged, uids: shown})
	}
}

// open returns the shared state of a mailbox, loading it under the
// store's writer lock so that no change falls between the reading and the
// hook.
func (srv *Server) open(ctx context.Context, mailboxID int64) (*mailbox, error) {
	srv.mu.Lock()
	if m := srv.mailboxes[mailboxID]; m != nil {
		if m.refs == 0 {
			srv.idle--
		}
		m.refs++
		srv.mu.Unlock()
		return m, nil
	}
	srv.mu.Unlock()
	var state *mailbox
	err := srv.store.LoadMailbox(ctx, mailboxID, func(mb store.Mailbox, msgs []store.Message) {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if m := srv.mailboxes[mailboxID]; m != nil {
			state = m
			if m.refs == 0 {
				srv.idle--
			}
		} else {
			state = &mailbox{id: mailboxID, recentUID: max(mb.RecentUID, srv.recentUIDs[mailboxID])}
			state.msgs = make([]msgInfo, len(msgs))
			for i, msg := range msgs {
				state.msgs[i] = msgInfo{uid: msg.UID, id: msg.ID, size: msg.Size, date: msg.InternalDate, flags: msg.Flags}
				state.addKeywords(msg.Flags)
			}
			sort.Strings(state.keywords)
			srv.mailboxes[mailboxID] = state
		}
		state.refs++
	})
	return state, err
}

// release gives back a state taken by open. The states of the keepIdle
// most recently used mailboxes that nobody has selected are kept, current,
// so that clients that reconnect find them warm.
func (srv *Server) release(m *mailbox) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if m.refs--; m.refs > 0 {
		return
	}
	m.released = time.Now()
	if srv.mailboxes[m.id] != m {
		return // deleted meanwhile: not kept
	}
	if srv.idle++; srv.idle <= keepIdle {
		return
	}
	var oldest *mailbox
	for _, st := range srv.mailboxes {
		if st.refs == 0 && (oldest == nil || st.released.Before(oldest.released)) {
			oldest = st
		}
	}
	delete(srv.mailboxes, oldest.id)
	srv.idle--
}

// keepIdle is how many mailboxes nobody has selected keep their state.
const keepIdle = 128

// claimRecent gives a session that selects a mailbox read-write the
// messages nobody has been given as \Recent yet, and returns their UIDs.
// Called with m.mu held.
func (m *mailbox) claimRecent() []uint32 {
	i, _ := slices.BinarySearchFunc(m.msgs, m.recentUID, func(mi msgInfo, u uint32) int { return cmp.Compare(mi.uid, u) })
	var out []uint32
	for _, mi := range m.msgs[i:] {
		out = append(out, mi.uid)
	}
	if n := len(m.msgs); n > 0 && m.msgs[n-1].uid >= m.recentUID {
		m.recentUID = m.msgs[n-1].uid + 1
	}
	return out
}

// recentCount is how many messages no session has been given as \Recent
// (what STATUS RECENT counts). Called with m.mu held.
func (m *mailbox) recentCount() uint32 {
	i, _ := slices.BinarySearchFunc(m.msgs, m.recentUID, func(mi msgInfo, u uint32) int { return cmp.Compare(mi.uid, u) })
	return uint32(len(m.msgs) - i)
}
