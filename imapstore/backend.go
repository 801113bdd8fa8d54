// Package imapstore serves the store over IMAP with go-imap's imapserver:
// IMAP4rev1 and IMAP4rev2, IDLE, MOVE, UIDPLUS, SPECIAL-USE, NAMESPACE,
// LIST-STATUS, LITERAL+, APPENDLIMIT, with the folder names, hierarchy
// separator and namespace of the legacy server the account came from.
package imapstore

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"
	"unsafe"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/store"
)

// AppendLimit is the largest message APPEND takes (APPENDLIMIT).
const AppendLimit = 64 << 20

// Caps are the capabilities the local server announces.
var Caps = imap.CapSet{
	imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}, imap.CapIdle: {}, imap.CapMove: {}, imap.CapUIDPlus: {},
	imap.CapSpecialUse: {}, imap.CapNamespace: {}, imap.CapListExtended: {}, imap.CapListStatus: {},
	imap.CapLiteralPlus: {}, imap.CapUnselect: {}, imap.CapStatusSize: {}, imap.CapESearch: {},
	imap.Cap("APPENDLIMIT=67108864"): {}, imap.CapChildren: {},
}

// Backend holds what sessions share: the store and one tracker per
// selected mailbox, fed synchronously by the store's change hook so that
// trackers never disagree with the database.
type Backend struct {
	Store *store.Store
	Log   *slog.Logger

	mu        sync.Mutex
	mailboxes map[int64]*mailboxState
	idle      int // states in mailboxes that nobody has selected
}

// keepIdle is how many mailboxes nobody has selected keep their state
// (UIDs, tracker, FETCH cache), kept current by the change hook, so that
// clients that reconnect often find it warm. The least recently used go
// first.
const keepIdle = 128

// mailboxState mirrors one mailbox's UIDs for the sessions that have it
// selected; seq n is uids[n-1] in the server's (tracker's) view.
type mailboxState struct {
	mu      sync.Mutex
	uids    []uint32
	tracker *imapserver.MailboxTracker
	refs    int
	// released is when refs last fell to 0 (for keepIdle).
	released time.Time
	// meta caches what FETCH serves of each message (Store.SummariesLocked),
	// in UID order, loaded at the first FETCH and kept current by apply:
	// flags changed, expunged removed; added messages are listed in
	// missing and loaded at the next FETCH. A slice, not a map: a FETCH
	// reads it in order, and a whole mailbox's worth of map lookups costs
	// more than encoding the answers.
	meta    []store.Message
	loaded  bool
	missing map[uint32]struct{}
}

// NewBackend builds a backend and hooks it to the store's changes.
func NewBackend(st *store.Store, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{Store: st, Log: log, mailboxes: map[int64]*mailboxState{}}
	st.OnChange(b.apply)
	return b
}

// apply runs under the store's writer lock, in commit order.
func (b *Backend) apply(c store.Change) {
	b.mu.Lock()
	m := b.mailboxes[c.MailboxID]
	b.mu.Unlock()
	if m == nil {
		return
	}
	if c.Kind == store.MailboxDeleted {
		// Its id may be given to a new mailbox: the state must not outlive
		// it (sessions that have it selected keep their pointer).
		b.mu.Lock()
		if b.mailboxes[c.MailboxID] == m {
			delete(b.mailboxes, c.MailboxID)
			if m.refs == 0 {
				b.idle--
			}
		}
		b.mu.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch c.Kind {
	case store.MessagesAdded:
		if m.loaded {
			for _, u := range c.UIDs {
				m.missing[u] = struct{}{}
			}
		}
		added := append([]uint32(nil), c.UIDs...)
		sort.Slice(added, func(i, j int) bool { return added[i] < added[j] })
		m.uids = append(m.uids, added...)
		m.tracker.QueueNumMessages(uint32(len(m.uids)))
	case store.MessagesExpunged, store.MailboxDeleted:
		gone := map[uint32]bool{}
		for _, u := range c.UIDs {
			gone[u] = true
			delete(m.missing, u)
		}
		if m.loaded {
			m.meta = slices.DeleteFunc(m.meta, func(msg store.Message) bool { return gone[msg.UID] })
		}
		kept := m.uids[:0]
		// Highest first, so each sequence number is valid when queued.
		for i := len(m.uids) - 1; i >= 0; i-- {
			if gone[m.uids[i]] {
				m.tracker.QueueExpunge(uint32(i + 1))
			}
		}
		for _, u := range m.uids {
			if !gone[u] {
				kept = append(kept, u)
			}
		}
		m.uids = kept
	case store.FlagsChanged:
		for _, f := range c.Flags {
			if i := m.metaIndex(f.UID); i >= 0 {
				m.meta[i].Flags = f.Flags
			}
			if i := indexOf(m.uids, f.UID); i >= 0 {
				m.tracker.QueueMessageFlags(uint32(i+1), imap.UID(f.UID), toFlags(f.Flags), nil)
			}
		}
	}
}

// open returns the shared state of a mailbox, creating it from the store
// under the writer lock so that no change falls between read and hook.
func (b *Backend) open(ctx context.Context, mailboxID int64) (*mailboxState, error) {
	b.mu.Lock()
	if m := b.mailboxes[mailboxID]; m != nil {
		if m.refs == 0 {
			b.idle--
		}
		m.refs++
		b.mu.Unlock()
		return m, nil
	}
	b.mu.Unlock()
	var state *mailboxState
	err := b.Store.WithMailboxUIDs(ctx, mailboxID, func(uids []uint32) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if m := b.mailboxes[mailboxID]; m != nil {
			state = m
			if m.refs == 0 {
				b.idle-- // kept idle, selected again
			}
		} else {
			state = &mailboxState{uids: uids, tracker: imapserver.NewMailboxTracker(uint32(len(uids)))}
			b.mailboxes[mailboxID] = state
		}
		state.refs++
	})
	return state, err
}

func (b *Backend) release(mailboxID int64, m *mailboxState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	m.released = time.Now()
	if b.mailboxes[mailboxID] != m {
		return // deleted meanwhile: not kept
	}
	// Keep it, but at most keepIdle unselected mailboxes.
	if b.idle++; b.idle <= keepIdle {
		return
	}
	oldestID := int64(0)
	var oldest *mailboxState
	for id, st := range b.mailboxes {
		if st.refs == 0 && (oldest == nil || st.released.Before(oldest.released)) {
			oldest, oldestID = st, id
		}
	}
	delete(b.mailboxes, oldestID)
	b.idle--
}

// summaries appends to into the cached metadata of uids, in their order (loading
// what the cache lacks first); a message that is gone has ID 0.
func (b *Backend) summaries(ctx context.Context, mailboxID int64, m *mailboxState, uids []uint32, into []store.Message) ([]store.Message, error) {
	err := b.Store.SummariesLocked(ctx, mailboxID, func() []store.UIDRange {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.loaded {
			return store.AllUIDs
		}
		var ranges []store.UIDRange
		for u := range m.missing {
			ranges = append(ranges, store.UIDRange{Start: u, Stop: u})
		}
		return ranges
	}, func(msgs []store.Message) {
		m.mu.Lock()
		defer m.mu.Unlock()
		sorted := len(m.meta) == 0 || len(msgs) == 0 || msgs[0].UID > m.meta[len(m.meta)-1].UID
		m.meta = append(m.meta, msgs...)
		if !sorted {
			slices.SortFunc(m.meta, func(a, b store.Message) int { return cmp.Compare(a.UID, b.UID) })
		}
		m.loaded = true
		m.missing = map[uint32]struct{}{} // loaded, or gone since
	})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// uids usually ascend: each is looked for from where the last was found.
	j := 0
	for i, u := range uids {
		if i == 0 || u < uids[i-1] {
			j, _ = slices.BinarySearchFunc(m.meta, u, func(msg store.Message, u uint32) int { return cmp.Compare(msg.UID, u) })
		}
		for j < len(m.meta) && m.meta[j].UID < u {
			j++
		}
		if j < len(m.meta) && m.meta[j].UID == u {
			into = append(into, m.meta[j])
		} else {
			into = append(into, store.Message{}) // gone: ID 0
		}
	}
	return into, nil
}

// metaIndex returns the index of uid in meta, or -1.
func (m *mailboxState) metaIndex(uid uint32) int {
	i, found := slices.BinarySearchFunc(m.meta, uid, func(msg store.Message, u uint32) int { return cmp.Compare(msg.UID, u) })
	if !found {
		return -1
	}
	return i
}

func indexOf(uids []uint32, uid uint32) int {
	i := sort.Search(len(uids), func(i int) bool { return uids[i] >= uid })
	if i < len(uids) && uids[i] == uid {
		return i
	}
	return -1
}

// toFlags views flags as IMAP flags, without a copy (imap.Flag is a
// string): the slices of the store and of its caches are never changed in
// place, only replaced.
func toFlags(flags []string) []imap.Flag {
	return unsafe.Slice((*imap.Flag)(unsafe.SliceData(flags)), len(flags))
}

func fromFlags(flags []imap.Flag) []string {
	out := make([]string, len(flags))
	for i, f := range flags {
		out[i] = string(f)
	}
	return out
}
