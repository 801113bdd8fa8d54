// Package storetest sets up stores for tests: opened with a cheap
// password hash and closed at the test's end, and accounts brought to a
// state the way the capture and the cut-over bring them there.
package storetest

import (
	"context"
	"testing"

	"mailcapture/store"
)

// Hash is a password hash cheap enough for tests (the real parameters
// cost tens of milliseconds per login).
func Hash() store.HashParams { return store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1} }

// Open opens a store in dir (a fresh temporary directory if dir is "")
// with the test hash, closed when the test ends. Options, if given, are
// used as they are, with the test hash where they name none.
func Open(tb testing.TB, dir string, opts ...store.Options) *store.Store {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	var o store.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Hash == (store.HashParams{}) {
		o.Hash = Hash()
	}
	st, err := store.Open(context.Background(), dir, o)
	if err != nil {
		tb.Fatalf("open the store: %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// MarkCaptured moves an account that is capturing (or in cut-over) to
// captured, through the cut-over state as a real cut-over does.
func MarkCaptured(tb testing.TB, st *store.Store, name string) {
	tb.Helper()
	ctx := context.Background()
	acct, err := st.Account(ctx, name)
	if err != nil {
		tb.Fatalf("mark %s captured: %v", name, err)
	}
	if acct.State == store.StateCapturing {
		if err := st.Transition(ctx, name, store.StateCapturing, store.StateCutover); err != nil {
			tb.Fatalf("mark %s captured: %v", name, err)
		}
	}
	if err := st.Transition(ctx, name, store.StateCutover, store.StateCaptured); err != nil {
		tb.Fatalf("mark %s captured: %v", name, err)
	}
}

// Account records an account with password and the given mailboxes (an
// INBOX if none are given) and brings it to state (capturing, cutover or
// captured).
func Account(tb testing.TB, st *store.Store, name, password string, state store.State, mailboxes ...store.MailboxSpec) store.Account {
	tb.Helper()
	ctx := context.Background()
	acct, err := st.CreateAccount(ctx, name, password, store.StateCapturing)
	if err != nil {
		tb.Fatalf("create account %s: %v", name, err)
	}
	if len(mailboxes) == 0 {
		mailboxes = []store.MailboxSpec{{Name: "INBOX"}}
	}
	for _, m := range mailboxes {
		if _, err := st.CreateMailbox(ctx, acct.ID, m); err != nil {
			tb.Fatalf("create mailbox %s of %s: %v", m.Name, name, err)
		}
	}
	switch state {
	case store.StateCutover:
		if err := st.Transition(ctx, name, store.StateCapturing, store.StateCutover); err != nil {
			tb.Fatalf("move %s to cut-over: %v", name, err)
		}
	case store.StateCaptured:
		MarkCaptured(tb, st, name)
	}
	acct.State = state
	return acct
}
