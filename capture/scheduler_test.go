package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
)

func waitDone(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not finish within 60s", what)
	}
}

// TestSchedulerOrderAndSingleFlight: with one worker, interactive logins
// go first, a second submission joins the running job, and every account
// ends converged and verified.
func TestSchedulerOrderAndSingleFlight(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := legacytest.Start(t, legacytest.Options{})
	st := openStore(t)
	accounts := []string{"b@example.org", "c@example.org", "d@example.org"}
	for i, a := range accounts {
		d.AddUser(t, a, "pw-"+a)
		d.Populate(t, a, "pw-"+a, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(uint64(20+i), 5, 3000)}})
		st.CreateAccount(ctx, a, "pw-"+a, store.StateCapturing)
	}
	var mu sync.Mutex
	var started, ready []string
	s := &Scheduler{Engine: newEngine(st, d), Workers: 1}
	s.onStart = func(a string) {
		mu.Lock()
		started = append(started, a)
		mu.Unlock()
	}
	s.OnReady = func(_ context.Context, a, _ string) {
		mu.Lock()
		ready = append(ready, a)
		mu.Unlock()
	}
	doneB := s.Submit("b@example.org", "pw-b@example.org", false)
	doneC := s.Submit("c@example.org", "pw-c@example.org", false)
	doneD := s.Submit("d@example.org", "pw-d@example.org", true)
	if again := s.Submit("b@example.org", "pw-b@example.org", false); again != doneB {
		t.Fatal("a second submission made a second job")
	}
	go s.Run(ctx)
	for _, ch := range []<-chan struct{}{doneB, doneC, doneD} {
		waitDone(t, ch, "job")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(started) != "[d@example.org b@example.org c@example.org]" {
		t.Fatalf("start order %v: the interactive login must go first", started)
	}
	for _, a := range accounts {
		st, _ := s.Status(a)
		if st.State != JobReady || st.Attempts != 1 {
			t.Fatalf("%s: %+v", a, st)
		}
	}
	if len(started) != 3 {
		t.Fatalf("%d jobs ran for 3 accounts", len(started))
	}
}

// TestSchedulerRetriesAndResumes: the legacy server is away; the job
// fails, the concurrency limit drops, the job is retried with backoff, and
// completes once the server is back.
func TestSchedulerRetriesAndResumes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	proxy := legacytest.StartProxy(t, d.IMAPAddr)
	proxy.SetDown(true)
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := newEngine(st, d)
	e.IMAP.Address = proxy.Addr
	failed := make(chan struct{}, 16)
	s := &Scheduler{Engine: e, Workers: 4, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
	s.onStart = func(string) {
		if proxy.Addr != "" {
			select {
			case failed <- struct{}{}:
			default:
			}
		}
	}
	done := s.Submit(user, password, false)
	go s.Run(ctx)
	// Two attempts against the absent server, then bring it back.
	<-failed
	<-failed
	if l := s.Limit(); l >= 4 {
		t.Fatalf("concurrency limit %d did not drop after legacy errors", l)
	}
	acct, _ := st.Account(ctx, user)
	if acct.LastError == "" {
		t.Fatal("the legacy error is not recorded on the account")
	}
	proxy.SetDown(false)
	waitDone(t, done, "job")
	status, _ := s.Status(user)
	if status.State != JobReady || status.Attempts < 2 {
		t.Fatalf("status %+v", status)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
	if acct, _ := st.Account(ctx, user); acct.LastError != "" {
		t.Fatalf("error still shown after success: %q", acct.LastError)
	}
}

// TestSchedulerStopsOnBadCredentials: a refused password ends the job for
// good after one attempt.
func TestSchedulerStopsOnBadCredentials(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, user, password)
	st := openStore(t)
	st.CreateAccount(ctx, user, "old password", store.StateCapturing)
	stopped := make(chan error, 1)
	s := &Scheduler{Engine: newEngine(st, d), BackoffMin: time.Millisecond}
	s.OnStopped = func(_ string, err error) { stopped <- err }
	done := s.Submit(user, "old password", false)
	go s.Run(ctx)
	waitDone(t, done, "job")
	if err := <-stopped; !errors.Is(err, legacyclient.ErrBadCredentials) {
		t.Fatalf("stopped with %v", err)
	}
	if status, _ := s.Status(user); status.State != JobStopped || status.Attempts != 1 {
		t.Fatalf("status %+v", status)
	}
}

// TestSchedulerSlowsDownOnSlowLogins: logins far slower than the fastest
// seen lower the concurrency limit; successes raise it again.
func TestSchedulerSlowsDownOnSlowLogins(t *testing.T) {
	s := &Scheduler{Workers: 4}
	for i := 0; i < 5; i++ {
		s.observeLatency(20 * time.Millisecond)
	}
	if s.Limit() != 4 {
		t.Fatalf("limit %d after fast logins", s.Limit())
	}
	s.observeLatency(100 * time.Millisecond) // slower, but under the floor
	if s.Limit() != 4 {
		t.Fatalf("limit %d after a login under the floor", s.Limit())
	}
	s.observeLatency(2 * time.Second)
	s.observeLatency(3 * time.Second)
	if s.Limit() != 2 {
		t.Fatalf("limit %d after two slow logins, want 2", s.Limit())
	}
	for i := 0; i < 10; i++ {
		s.observeLatency(5 * time.Second)
	}
	if s.Limit() != 1 {
		t.Fatalf("limit %d, want it floored at 1", s.Limit())
	}
}

// TestSchedulerTrickleIsReady: a mailbox that gets a new message after
// every committed batch never yields a pass with nothing to do. Without
// Trickle the attempt fails (not converged) and is retried; with it the
// account is ready after its first attempt (the cut-over holds the mail
// and finishes the convergence).
func TestSchedulerTrickleIsReady(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	c := d.Login(t, user, password)
	defer c.Close()
	var mu sync.Mutex
	arriving := func(budget int) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			if budget == 0 {
				return
			}
			budget--
			body := fmt.Sprintf("Message-ID: <arriving-%d@example.org>\r\nSubject: new\r\n\r\nhello\r\n", budget)
			ap := c.Append("INBOX", int64(len(body)), nil)
			ap.Write([]byte(body))
			ap.Close()
			if _, err := ap.Wait(); err != nil {
				t.Errorf("append: %v", err)
			}
		}
	}
	run := func(trickle int) (JobStatus, bool) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st := openStore(t)
		st.CreateAccount(ctx, user, password, store.StateCapturing)
		e := newEngine(st, d)
		e.afterCommit = arriving(40)
		started := make(chan struct{}, 8)
		ready := make(chan struct{}, 1)
		s := &Scheduler{Engine: e, MaxPasses: 3, Trickle: trickle, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond,
			OnReady: func(context.Context, string, string) { ready <- struct{}{} }}
		s.onStart = func(string) { started <- struct{}{} }
		done := s.Submit(user, password, false)
		go s.Run(ctx)
		select {
		case <-done:
			waitDone(t, ready, "OnReady")
			status, _ := s.Status(user)
			return status, true
		case <-started:
		}
		select {
		case <-done:
			waitDone(t, ready, "OnReady")
			status, _ := s.Status(user)
			return status, true
		case <-started: // a second attempt: the first did not converge
			status, _ := s.Status(user)
			return status, false
		}
	}
	if status, ready := run(0); ready || !strings.Contains(status.LastError, "not converged") {
		t.Fatalf("without Trickle: ready %v, status %+v; want a failed attempt, not converged", ready, status)
	}
	if status, ready := run(5); !ready || status.State != JobReady || status.Attempts != 1 {
		t.Fatalf("with Trickle: ready %v, status %+v; want ready after one attempt", ready, status)
	}
}
