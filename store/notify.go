package store

import (
	"context"
	"fmt"
	"sync"
)

// ChangeKind says what happened in a mailbox.
type ChangeKind int

// The kinds of change a Watcher reports.
const (
	MessagesAdded ChangeKind = iota
	MessagesExpunged
	FlagsChanged
	MailboxDeleted
)

// Change is one committed change to a mailbox. Changes are published after
// their commit, under the writer lock, so every watcher sees them in commit
// order.
type Change struct {
	MailboxID int64
	Kind      ChangeKind
	// UIDs lists the added, expunged or (for MailboxDeleted) removed UIDs,
	// ascending.
	UIDs []uint32
	// Flags lists the new flags of each changed message (FlagsChanged).
	Flags []FlagUpdate
	// Added describes the added messages (MessagesAdded), in UIDs' order:
	// ID, UID, InternalDate, Size and Flags.
	Added []Message
	// Origin is what the change's caller put in its context with
	// WithOrigin (a session telling its own changes from others'), or nil.
	Origin any
}

type originKey struct{}

// WithOrigin marks the changes made with ctx as coming from origin: each
// Change they publish carries it.
func WithOrigin(ctx context.Context, origin any) context.Context {
	return context.WithValue(ctx, originKey{}, origin)
}

func originOf(ctx context.Context) any { return ctx.Value(originKey{}) }

// Watcher receives the changes of one mailbox (for IMAP IDLE and NOOP).
type Watcher struct {
	mailboxID int64
	owner     *watchers
	mu        sync.Mutex
	pending   []Change
	signal    chan struct{}
	closed    bool
}

// Ready is signalled when changes are pending; it is closed when the
// watcher or the store closes.
func (w *Watcher) Ready() <-chan struct{} { return w.signal }

// Drain returns and clears the pending changes, oldest first.
func (w *Watcher) Drain() []Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.pending
	w.pending = nil
	return out
}

// Close stops the watcher.
func (w *Watcher) Close() {
	w.owner.remove(w)
	w.close()
}

func (w *Watcher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.signal)
	}
}

func (w *Watcher) push(c Change) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.pending = append(w.pending, c)
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

type watchers struct {
	mu   sync.Mutex
	byMB map[int64]map[*Watcher]bool
	// hooks run synchronously for every change, in commit order, with the
	// writer lock held.
	hooks []func(Change)
}

// OnChange registers fn to run for every committed change, synchronously,
// in commit order, while the writer lock is held: when the committing call
// returns, fn has seen its changes. fn must be quick and must not call the
// store's write methods (it would deadlock).
func (s *Store) OnChange(fn func(Change)) {
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	s.watchers.hooks = append(s.watchers.hooks, fn)
}

// WithMailboxUIDs calls fn with the mailbox's UIDs, ascending, while the
// writer lock is held, so that no change can commit between the reading
// and fn (OnChange handlers see every later change).
func (s *Store) WithMailboxUIDs(ctx context.Context, mailboxID int64, fn func(uids []uint32)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	uids, err := queryUIDs(ctx, s.write, "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", mailboxID)
	if err != nil {
		return fmt.Errorf("UIDs of mailbox %d: %w", mailboxID, err)
	}
	fn(uids)
	return nil
}

// Watch starts watching a mailbox. Close the watcher when done.
func (s *Store) Watch(mailboxID int64) *Watcher {
	w := &Watcher{mailboxID: mailboxID, owner: &s.watchers, signal: make(chan struct{}, 1)}
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	if s.watchers.byMB == nil {
		s.watchers.byMB = map[int64]map[*Watcher]bool{}
	}
	if s.watchers.byMB[mailboxID] == nil {
		s.watchers.byMB[mailboxID] = map[*Watcher]bool{}
	}
	s.watchers.byMB[mailboxID][w] = true
	return w
}

func (ws *watchers) publish(c Change) {
	ws.mu.Lock()
	hooks := ws.hooks
	for w := range ws.byMB[c.MailboxID] {
		w.push(c)
	}
	ws.mu.Unlock()
	for _, fn := range hooks {
		fn(c)
	}
}

func (ws *watchers) remove(w *Watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.byMB[w.mailboxID], w)
	if len(ws.byMB[w.mailboxID]) == 0 {
		delete(ws.byMB, w.mailboxID)
	}
}

func (ws *watchers) closeAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, set := range ws.byMB {
		for w := range set {
			w.close()
		}
	}
	ws.byMB = nil
}
