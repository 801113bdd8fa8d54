package front

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"mailcapture/labels"
	"mailcapture/store"
	"mailcapture/storetest"
)

// TestRouteWaitsDuringCutover: a login for an account in cut-over waits
// for it to end and then goes to the store.
func TestRouteWaitsDuringCutover(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, "")
	st.CreateAccount(ctx, "w@example.org", "pw", store.StateCapturing)
	st.Transition(ctx, "w@example.org", store.StateCapturing, store.StateCutover)
	r := &Router{Store: st, CutoverWait: time.Minute}
	legacyCalls := 0
	attempt := func(user string) Attempt {
		return Attempt{Protocol: labels.IMAP, User: user, Password: "pw", Legacy: func(context.Context, string) (io.Closer, error) {
			legacyCalls++
			return io.NopCloser(nil), nil
		}}
	}
	routed := make(chan labels.Route, 1)
	go func() {
		out, _ := r.Login(ctx, attempt("w@example.org"))
		routed <- out.Route
	}()
	// While the account is in cut-over the login can only wait (the
	// deadline is a minute away), so its answer must follow the switch.
	if err := st.Transition(ctx, "w@example.org", store.StateCutover, store.StateCaptured); err != nil {
		t.Fatal(err)
	}
	if got := <-routed; got != labels.Local {
		t.Fatalf("route after the cut-over ended: %v, want local", got)
	}
	// An unknown account goes to the legacy server, in shadow mode too.
	if out, err := r.Login(ctx, attempt("new@example.org")); err != nil || out.Route != labels.Legacy {
		t.Fatalf("unknown account routed %v (%v)", out.Route, err)
	}
	shadow := &Router{Store: st, Mode: "shadow"}
	if out, err := shadow.Login(ctx, attempt("w@example.org")); err != nil || out.Route != labels.Legacy {
		t.Fatalf("shadow mode routed a captured account %v (%v)", out.Route, err)
	}
	if legacyCalls != 2 {
		t.Fatalf("the legacy server was asked %d times, want 2", legacyCalls)
	}
}

// TestFirstLoginStormHashesOnce: a hundred logins of a new account that
// the legacy server accepted at the same moment record it with one slow
// hash; the others wait for it and find their password known. A second
// password (changed at the legacy server) costs one check and one hash.
func TestFirstLoginStormHashesOnce(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, "", store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1, Concurrency: 1}})
	r := &Router{Store: st}
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.legacyLoginOK(ctx, nil, "storm@example.org", "storm@example.org", "pw", true)
		}()
	}
	wg.Wait()
	if n := st.PasswordHashes(); n != 1 {
		t.Fatalf("100 first logins computed %d hashes, want 1", n)
	}
	if ok, err := st.VerifyPassword(ctx, "storm@example.org", "pw"); err != nil || !ok {
		t.Fatalf("stored hash does not match: %v %v", ok, err)
	}
	before := st.PasswordHashes()
	for range 10 {
		r.legacyLoginOK(ctx, nil, "storm@example.org", "storm@example.org", "new pw", true)
	}
	if n := st.PasswordHashes() - before; n != 2 {
		t.Fatalf("10 logins with a changed password cost %d hashes, want 2 (one check, one new hash)", n)
	}
	if ok, _ := st.VerifyPassword(ctx, "storm@example.org", "new pw"); !ok {
		t.Fatal("the changed password's hash was not stored")
	}
}

// TestLoginDuringLongCutoverIsRefused: a login that outlasts the wait for
// a cut-over is refused for now (ErrMoving), never sent to the legacy
// server, whose mailbox the final sync must have to itself.
func TestLoginDuringLongCutoverIsRefused(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, "")
	st.CreateAccount(ctx, "slow@example.org", "pw", store.StateCapturing)
	st.Transition(ctx, "slow@example.org", store.StateCapturing, store.StateCutover)
	r := &Router{Store: st, CutoverWait: 200 * time.Millisecond}
	a := Attempt{Protocol: labels.IMAP, User: "slow@example.org", Password: "pw", Legacy: func(context.Context, string) (io.Closer, error) {
		t.Fatal("the legacy server was asked during a cut-over")
		return nil, nil
	}}
	if out, err := r.Login(ctx, a); !errors.Is(err, ErrMoving) {
		t.Fatalf("login during a long cut-over: route %v, err %v; want ErrMoving", out.Route, err)
	}
}
