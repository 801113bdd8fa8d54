package capture

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/loadgauge"
	"mailcapture/store"
)

// Scheduler runs capture jobs to convergence:
//
//   - one job per account at a time (a second Submit joins the first);
//   - at most Workers jobs at once, fewer while the legacy server suffers:
//     each legacy error halves the limit, each login much slower than the
//     fastest seen lowers it by one, each success raises it by one. A
//     login is held against the legacy server only when the local
//     machine's own load does not explain it (see Local);
//   - accounts whose user is logged in now (interactive) go before bulk
//     work, older submissions first;
//   - legacy errors are retried with exponential backoff, and a retried job
//     resumes where it stopped (the store keeps every committed batch);
//   - a bad-credentials answer stops the job: it is reported, not retried.
type Scheduler struct {
	Engine *Engine
	// Workers is the most jobs that run at once. Default 4.
	Workers int
	// MaxPasses bounds one convergence attempt. Default 10.
	MaxPasses int
	// BackoffMin and BackoffMax bound the wait before a retry. Defaults
	// 5s and 10m.
	BackoffMin, BackoffMax time.Duration
	// ConnectRate, if set, limits new legacy jobs started per second
	// across all accounts.
	ConnectRate float64
	// OnReady is called when an account's copy is converged and verified
	// (ready for cut-over), or, with Trickle set, when it is converged but
	// for a trickle of new mail.
	OnReady func(ctx context.Context, account, password string)
	// Trickle, if set, makes an attempt whose passes never find nothing
	// to do, but whose last pass found at most Trickle message changes
	// and no folder change, ready too: the mailbox keeps getting mail,
	// and only a cut-over (which holds inbound mail and ends the user's
	// sessions) lets its last passes and verification find it still. The
	// cut-over must then converge and verify before it switches.
	Trickle int
	// OnStopped is called when a job gives up for good (bad credentials).
	OnStopped func(account string, err error)
	Log       *slog.Logger
	// Local tells how busy the local machine is (the share of recent
	// time in which its tasks waited for a CPU or the disk). Default the
	// machine's pressure stall information (loadgauge.New).
	Local LocalLoad
	// SlowLoginFloor is the login time under which no login counts as
	// slow, however fast the fastest was. Default 250 ms.
	SlowLoginFloor time.Duration

	mu      sync.Mutex
	jobs    map[string]*job
	queue   jobQueue
	running int
	limit   int // adaptive: between 1 and Workers
	wake    chan struct{}
	seq     uint64
	lastRun time.Time

	// onStart, if set, runs as each job starts (tests check the order).
	onStart func(account string)
	// fastest is the quickest legacy login seen, slowly forgotten.
	fastest time.Duration
	// slowLegacy and slowLocal count the slow logins held against the
	// legacy server and those the local load explained.
	slowLegacy, slowLocal int
	// onLimit, if set, sees every change of the limit (tests).
	onLimit func(limit int)
}

// LocalLoad tells how busy the local machine is: Stall is the share of
// recent time (0 to 1) in which its tasks waited for a CPU or the disk.
type LocalLoad interface {
	Stall() float64
}

// Logins slower than slowFactor times the fastest one seen (and slower
// than the floor) mean the legacy server is struggling, unless the local
// machine's load explains them.
const (
	slowFactor       = 4
	defaultSlowFloor = 250 * time.Millisecond
	// maxStall bounds the slowdown credited to local load (1/(1-0.9):
	// tenfold), so that a legacy server that really slows down is still
	// noticed on a saturated machine (at 40 times its fastest login).
	maxStall = 0.9
)

// observeLatency takes the duration of a legacy login and lowers the
// concurrency limit when the legacy server answers much slower than it
// can. A local machine whose tasks wait for a CPU or the disk for a share
// s of the time runs everything about 1/(1-s) times slower, the login's
// own side of it too (and the legacy server's, where it runs on the same
// machine): the fastest login seen is scaled by that before it is
// compared, so a busy local machine does not make the scheduler back off
// from a legacy server that answers as fast as ever.
func (s *Scheduler) observeLatency(d time.Duration) {
	s.mu.Lock()
	s.init()
	local := s.Local
	s.mu.Unlock()
	stall := min(max(local.Stall(), 0), maxStall)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fastest == 0 || d < s.fastest {
		s.fastest = d
	} else if stall < 0.5 {
		s.fastest += (d - s.fastest) / 64 // forget a fluke fast login over time
	}
	floor := s.SlowLoginFloor
	if floor <= 0 {
		floor = defaultSlowFloor
	}
	if d <= floor || d <= slowFactor*s.fastest {
		return
	}
	expected := time.Duration(float64(slowFactor*s.fastest) / (1 - stall))
	if d <= expected {
		s.slowLocal++
		s.log().Info("legacy login slow, but the local machine is busy: not held against the legacy server",
			"login", d, "fastest", s.fastest, "local_stall", stall)
		return
	}
	s.slowLegacy++
	if s.limit > 1 {
		s.setLimit(s.limit - 1)
		s.log().Warn("legacy server answers slowly; fewer captures at once", "login", d, "fastest", s.fastest,
			"local_stall", stall, "concurrency_limit", s.limit)
	}
}

// setLimit changes the adaptive limit (s.mu held).
func (s *Scheduler) setLimit(limit int) {
	if limit == s.limit {
		return
	}
	s.limit = limit
	if s.onLimit != nil {
		s.onLimit(limit)
	}
}

// SlowLogins returns how many slow legacy logins were held against the
// legacy server, and how many the local machine's load explained.
func (s *Scheduler) SlowLogins() (legacy, local int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slowLegacy, s.slowLocal
}

// JobState is where a job is.
type JobState string

// The job states.
const (
	JobQueued   JobState = "queued"
	JobRunning  JobState = "running"
	JobWaiting  JobState = "waiting" // for a retry after an error
	JobReady    JobState = "ready"
	JobStopped  JobState = "stopped"
	JobCanceled JobState = "canceled"
)

// JobStatus describes one account's job.
type JobStatus struct {
	State       JobState
	Interactive bool
	Attempts    int
	LastError   string
	NextAttempt time.Time
}

type job struct {
	account     string
	password    string
	interactive bool
	seq         uint64
	state       JobState
	attempts    int
	lastErr     error
	notBefore   time.Time
	firstStart  time.Time // of the first attempt: captures are timed from it
	index       int       // in the queue; -1 if not queued
	done        chan struct{}
}

func (s *Scheduler) workers() int   { return orDefault(s.Workers, 4) }
func (s *Scheduler) maxPasses() int { return orDefault(s.MaxPasses, 10) }
func (s *Scheduler) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Scheduler) init() {
	if s.jobs == nil {
		s.jobs = map[string]*job{}
		s.wake = make(chan struct{}, 1)
		s.limit = s.workers()
	}
	if s.Local == nil {
		s.Local = loadgauge.New()
	}
}

// Submit asks for the account to be captured with password. If a job for
// the account exists, it takes the newer password, becomes interactive if
// this submission is, and runs again if it had finished. It returns a
// channel closed when the job ends (ready, stopped or canceled).
func (s *Scheduler) Submit(account, password string, interactive bool) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	j, ok := s.jobs[account]
	if ok && (j.state == JobQueued || j.state == JobRunning || j.state == JobWaiting) {
		j.password = password
		if interactive && !j.interactive {
			j.interactive = true
			if j.index >= 0 {
				heap.Fix(&s.queue, j.index)
			}
		}
		if j.state == JobWaiting && interactive {
			j.notBefore = time.Time{} // the user is here now: retry at once
		}
		s.signal()
		return j.done
	}
	s.seq++
	j = &job{account: account, password: password, interactive: interactive, seq: s.seq, state: JobQueued, index: -1, done: make(chan struct{})}
	s.jobs[account] = j
	heap.Push(&s.queue, j)
	s.signal()
	return j.done
}

// Status returns the account's job status, if it has one.
// Password returns the password the account's job was last submitted
// with, if the scheduler has a job for it (kept in memory only).
func (s *Scheduler) Password(account string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[account]
	if !ok || j.password == "" {
		return "", false
	}
	return j.password, true
}

// Status returns the account's job status, if it has a job.
func (s *Scheduler) Status(account string) (JobStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[account]
	if !ok {
		return JobStatus{}, false
	}
	st := JobStatus{State: j.state, Interactive: j.interactive, Attempts: j.attempts, NextAttempt: j.notBefore}
	if j.lastErr != nil {
		st.LastError = j.lastErr.Error()
	}
	return st, true
}

// Limit returns the current adaptive limit on concurrent jobs.
func (s *Scheduler) Limit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	return s.limit
}

func (s *Scheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run starts jobs until ctx ends, then waits for the running ones, which
// see ctx's end and stop after their current batch.
func (s *Scheduler) Run(ctx context.Context) {
	s.mu.Lock()
	s.init()
	s.mu.Unlock()
	if s.Engine.OnLatency == nil {
		s.Engine.OnLatency = s.observeLatency
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next, wait := s.pick(time.Now())
		if next != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.runJob(ctx, next)
			}()
			continue
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			s.cancelQueued()
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// pick takes the next runnable job, or says how long to wait for one.
func (s *Scheduler) pick(now time.Time) (*job, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wait := time.Hour
	if s.running >= s.limit || s.queue.Len() == 0 {
		return nil, wait
	}
	if s.ConnectRate > 0 {
		gap := time.Duration(float64(time.Second) / s.ConnectRate)
		if d := s.lastRun.Add(gap).Sub(now); d > 0 {
			return nil, d
		}
	}
	// The queue is ordered by priority; take the best job whose backoff
	// has passed.
	var best *job
	for _, j := range s.queue {
		if !j.notBefore.After(now) && (best == nil || s.queue.before(j, best)) {
			best = j
		}
		if d := j.notBefore.Sub(now); d > 0 && d < wait {
			wait = d
		}
	}
	if best == nil {
		return nil, wait
	}
	heap.Remove(&s.queue, best.index)
	best.state = JobRunning
	best.attempts++
	if best.firstStart.IsZero() {
		best.firstStart = now
	}
	s.running++
	s.lastRun = now
	return best, 0
}

func (s *Scheduler) runJob(ctx context.Context, j *job) {
	s.mu.Lock()
	password, attempt, interactive, firstStart := j.password, j.attempts, j.interactive, j.firstStart
	s.mu.Unlock()
	if s.onStart != nil {
		s.onStart(j.account)
	}
	log := s.log().With("account", j.account)
	log.Info("capture job started", "attempt", attempt, "interactive", interactive)
	obs := s.Engine.observer()
	obs.JobStarted()
	conv, err := s.Engine.Converge(ctx, j.account, password, s.maxPasses())
	obs.JobFinished(err == nil, time.Since(firstStart))

	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	s.running--
	j.lastErr = err
	trickle := s.Trickle > 0 && errors.Is(err, ErrNotConverged) && len(conv.Passes) > 0 && conv.Passes[len(conv.Passes)-1].Trickle(s.Trickle)
	switch {
	case err == nil || trickle:
		s.setLimit(min(s.limit+1, s.workers()))
		j.state = JobReady
		if trickle {
			j.lastErr = nil
			last := conv.Passes[len(conv.Passes)-1]
			log.Info("capture converged but for mail still arriving; the cut-over finishes it", "passes", len(conv.Passes),
				"last_added", last.Added, "last_flags_changed", last.FlagsChanged)
		} else {
			log.Info("capture converged and verified", "passes", len(conv.Passes), "messages", conv.Verification.Messages)
		}
		close(j.done)
		if s.OnReady != nil {
			go s.OnReady(context.WithoutCancel(ctx), j.account, password)
		}
	case errors.Is(err, legacyclient.ErrBadCredentials), errors.Is(err, store.ErrNotFound):
		j.state = JobStopped
		log.Warn("capture stopped: the legacy server refused the credentials, or the account is gone", "err", err)
		close(j.done)
		if s.OnStopped != nil {
			go s.OnStopped(j.account, err)
		}
	case ctx.Err() != nil:
		j.state = JobCanceled
		close(j.done)
	default:
		// The legacy server suffers or is away: fewer jobs at once, and
		// this one waits before it resumes.
		s.setLimit(max(1, s.limit/2))
		j.state = JobWaiting
		j.notBefore = time.Now().Add(s.backoff(j.attempts))
		log.Warn("capture failed; will resume", "err", err, "retry_at", j.notBefore, "concurrency_limit", s.limit)
		heap.Push(&s.queue, j)
	}
}

// backoff is exponential in the attempts, with jitter.
func (s *Scheduler) backoff(attempts int) time.Duration {
	lo, hi := s.BackoffMin, s.BackoffMax
	if lo <= 0 {
		lo = 5 * time.Second
	}
	if hi <= 0 {
		hi = 10 * time.Minute
	}
	d := lo
	for i := 1; i < attempts && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (s *Scheduler) cancelQueued() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.queue.Len() > 0 {
		j := heap.Pop(&s.queue).(*job)
		j.state = JobCanceled
		close(j.done)
	}
}

// jobQueue orders jobs: interactive first, then by submission.
type jobQueue []*job

func (q jobQueue) before(a, b *job) bool {
	if a.interactive != b.interactive {
		return a.interactive
	}
	return a.seq < b.seq
}

func (q jobQueue) Len() int           { return len(q) }
func (q jobQueue) Less(i, j int) bool { return q.before(q[i], q[j]) }
func (q jobQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *jobQueue) Push(x any) {
	j := x.(*job)
	j.index = len(*q)
	*q = append(*q, j)
}
func (q *jobQueue) Pop() any {
	old := *q
	j := old[len(old)-1]
	old[len(old)-1] = nil
	j.index = -1
	*q = old[:len(old)-1]
	return j
}
