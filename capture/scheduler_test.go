package capture

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/loadgauge"
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

// fixedLoad is a local machine whose stall share never changes.
type fixedLoad float64

func (f fixedLoad) Stall() float64 { return float64(f) }

// TestSchedulerSlowsDownOnSlowLogins: logins far slower than the fastest
// seen lower the concurrency limit on an idle local machine; the same
// logins on a machine whose tasks wait for a CPU 90 % of the time do not,
// while a login slower than that load explains still does.
func TestSchedulerSlowsDownOnSlowLogins(t *testing.T) {
	busy := &Scheduler{Workers: 4, Local: fixedLoad(0.9)}
	for i := 0; i < 5; i++ {
		busy.observeLatency(20 * time.Millisecond)
	}
	busy.observeLatency(400 * time.Millisecond) // 20x, under the 10x expected of the load times 4
	busy.observeLatency(700 * time.Millisecond)
	if legacy, local := busy.SlowLogins(); busy.Limit() != 4 || legacy != 0 || local != 2 {
		t.Fatalf("busy machine: limit %d, slow logins %d held against the legacy server, %d explained locally; want 4, 0, 2", busy.Limit(), legacy, local)
	}
	busy.observeLatency(2 * time.Second) // 100x: more than the load explains
	if legacy, _ := busy.SlowLogins(); busy.Limit() != 3 || legacy != 1 {
		t.Fatalf("busy machine, 100x login: limit %d, %d held against the legacy server; want 3, 1", busy.Limit(), legacy)
	}

	s := &Scheduler{Workers: 4, Local: fixedLoad(0)}
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

// TestSchedulerTellsSlowLegacyFromBusyMachine: with a baseline taken on
// an idle machine, a legacy server made slow on purpose (every answer
// held back 400 ms by the fault proxy) lowers the concurrency limit; the
// same legacy server at full speed, while eight CPU hogs load the local
// machine, makes logins several times slower too, but the scheduler
// credits that to the local load and keeps its limit.
func TestSchedulerTellsSlowLegacyFromBusyMachine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := legacytest.Start(t, legacytest.Options{})
	proxy := legacytest.StartProxy(t, d.IMAPAddr)
	st := openStore(t)
	made := 0
	accounts := func(k int) []string {
		var names []string
		for range k {
			name := fmt.Sprintf("load%d@example.org", made)
			made++
			d.AddUser(t, name, "pw")
			d.Populate(t, name, "pw", []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(uint64(made), 3, 2000)}})
			st.CreateAccount(ctx, name, "pw", store.StateCapturing)
			names = append(names, name)
		}
		return names
	}
	type watched struct {
		s        *Scheduler
		minLimit atomic.Int32
	}
	start := func() *watched {
		e := newEngine(st, d)
		e.IMAP.Address = proxy.Addr
		w := &watched{s: &Scheduler{Engine: e, Workers: 4, SlowLoginFloor: 20 * time.Millisecond}}
		w.minLimit.Store(4)
		w.s.onLimit = func(l int) {
			if int32(l) < w.minLimit.Load() {
				w.minLimit.Store(int32(l))
			}
		}
		go w.s.Run(ctx)
		return w
	}
	capture := func(w *watched, names []string) {
		var dones []<-chan struct{}
		for _, n := range names {
			dones = append(dones, w.s.Submit(n, "pw", false))
		}
		for i, ch := range dones {
			waitDone(t, ch, names[i])
			if st, _ := w.s.Status(names[i]); st.State != JobReady {
				t.Fatalf("%s: %+v", names[i], st)
			}
		}
	}

	slow := start()
	capture(slow, accounts(4)) // the baseline
	proxy.SetDelay(400 * time.Millisecond)
	capture(slow, accounts(2))
	proxy.SetDelay(0)
	if legacy, _ := slow.s.SlowLogins(); legacy == 0 || slow.minLimit.Load() >= 4 {
		t.Fatalf("slow legacy server: %d slow logins held against it, lowest limit %d; want some, and below 4", legacy, slow.minLimit.Load())
	}

	busy := start()
	capture(busy, accounts(4)) // the baseline, idle
	gauge := loadgauge.New()
	gauge.Stall()
	var hogs []*exec.Cmd
	defer func() {
		for _, h := range hogs {
			h.Process.Kill()
			h.Wait()
		}
	}()
	for range 8 {
		h := exec.Command("sh", "-c", "while :; do :; done")
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, h)
	}
	deadline := time.Now().Add(20 * time.Second)
	for gauge.Stall() < 0.5 {
		if time.Now().After(deadline) {
			t.Fatalf("eight CPU hogs did not load the machine (stall %.2f)", gauge.Stall())
		}
		runtime.Gosched()
	}
	capture(busy, accounts(8))
	legacy, local := busy.s.SlowLogins()
	if legacy != 0 || local == 0 || busy.minLimit.Load() != 4 {
		t.Fatalf("busy local machine: %d slow logins held against the legacy server, %d credited to the load, lowest limit %d; want 0, some, 4",
			legacy, local, busy.minLimit.Load())
	}
}
