package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// soakScale is how big and how long TestSoak runs: MAILCAPTURE_SOAK set
// to a duration (make soak: 10m) runs the full soak (500 IMAP sessions,
// half proxied, half local; 20 SMTP senders; two captures of 20,000
// messages); unset, a short one that keeps every part (make test).
type soakScale struct {
	duration              time.Duration
	sessions              int // split evenly between proxied and local
	captureMessages       int // per capture account
	senders               int // split evenly between the routes
	localAccounts         int
	cycle                 time.Duration // each session's pace: one round of commands per cycle
	senderPause           time.Duration
	legacyAccountsPerBusy int
}

func soakConfig(t *testing.T) soakScale {
	s := soakScale{duration: 20 * time.Second, sessions: 100, captureMessages: 3000, senders: 20, localAccounts: 10,
		cycle: time.Second, senderPause: 200 * time.Millisecond}
	if v := os.Getenv("MAILCAPTURE_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("MAILCAPTURE_SOAK=%q: %v", v, err)
		}
		s.duration, s.sessions, s.captureMessages = d, 500, 20000
	}
	return s
}

// soakStats gathers what the load saw.
type soakStats struct {
	mu        sync.Mutex
	latencies map[string][]time.Duration // local SELECT and FETCH
	errors    map[string]int
	commands  atomic.Int64
	// ended counts, per account, proxied sessions the server ended (at
	// its cut-over, each proxied session ends once; checked at the end).
	ended map[string]int
}

func (s *soakStats) latency(what string, d time.Duration) {
	s.mu.Lock()
	s.latencies[what] = append(s.latencies[what], d)
	s.mu.Unlock()
}

func (s *soakStats) sessionEnded(account string) {
	s.mu.Lock()
	s.ended[account]++
	s.mu.Unlock()
}

func (s *soakStats) fail(what string, err error) {
	s.mu.Lock()
	s.errors[what+": "+firstLine(err.Error())]++
	s.mu.Unlock()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestSoak runs serve (a child process) under mixed load for a bounded
// time: IMAP sessions, half proxied to the legacy Dovecot, half served
// locally, each doing SELECT, FETCH of flags and bodies and NOOP in a
// loop; SMTP senders on both routes; and two captures of large accounts
// whose legacy INBOX keeps receiving the relayed mail, so they keep
// syncing. It reports errors (there must be none), the p50/p99 latency of
// SELECT and FETCH on local sessions, and serve's memory and goroutines
// after warm-up and at the end (from its /metrics), then checks that
// every acknowledged message was stored exactly once and that the
// captures' local copies are exact so far.
func TestSoak(t *testing.T) {
	sc := soakConfig(t)
	d := legacytest.Start(t, legacytest.Options{ManySessions: true, MasterUser: "admin", MasterPassword: "master pw"})
	busy := []string{"busy1@example.org", "busy2@example.org"}
	for i, u := range busy {
		d.AddUser(t, u, "pw")
		d.SeedInbox(t, u, legacytest.Generate(uint64(500+i), sc.captureMessages, 8000))
	}
	path, dataDir, environ := bulkConfig(t, d)
	var locals []string
	for i := range sc.localAccounts {
		name := fmt.Sprintf("local%d@example.org", i)
		d.AddUser(t, name, "pw") // captured from the legacy server, which still has it (follow syncs)
		seedCapturedAccountFrom(t, d, dataDir, name, "pw")
		locals = append(locals, name)
	}
	masterPW := t.TempDir() + "/master.pw"
	if err := os.WriteFile(masterPW, []byte("master pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LISTEN__HTTP="+httpAddr,
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr, "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none",
		"MAILCAPTURE_LEGACY__MASTER__USER=admin", "MAILCAPTURE_LEGACY__MASTER__PASSWORD_FILE="+masterPW,
		"MAILCAPTURE_LIMITS__CONNECTIONS_PER_ADDRESS=2000", "MAILCAPTURETEST_PPROF="+os.Getenv("MAILCAPTURETEST_PPROF"), childEnv+"=1")
	// serve's warnings and errors, counted by message; the whole log
	// is kept in MAILCAPTURETEST_SOAK_LOG when set.
	var logMu sync.Mutex
	logged := map[string]int{}
	var logFile *os.File
	if p := os.Getenv("MAILCAPTURETEST_SOAK_LOG"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		logFile = f
	}
	levelMsg := regexp.MustCompile(`level=(WARN|ERROR) msg=("[^"]*"|\S+)`)
	child, addrs := startChildLogging(t, path, environ, func(line string) {
		if logFile != nil {
			fmt.Fprintln(logFile, line)
		}
		if m := levelMsg.FindStringSubmatch(line); m != nil {
			logMu.Lock()
			logged[m[1]+" "+m[2]]++
			logMu.Unlock()
		}
	})
	imapAddr, smtpAddr := addrs["listen.imap"], addrs["listen.smtp"]
	t.Logf("soak: serve started")

	// Each local account gets some mail first, over the local route.
	for i, name := range locals {
		for j := range 20 {
			if err := sendOne(smtpAddr, name, fmt.Sprintf("seed-%d-%d@soak.example", i, j)); err != nil {
				t.Fatal(err)
			}
		}
	}

	stats := &soakStats{latencies: map[string][]time.Duration{}, errors: map[string]int{}, ended: map[string]int{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var established sync.WaitGroup
	for i := range sc.sessions {
		proxied := i%2 == 0
		user := locals[i%len(locals)]
		if proxied {
			user = busy[(i/2)%len(busy)]
		}
		wg.Add(1)
		established.Add(1)
		go func() {
			defer wg.Done()
			soakSession(ctx, imapAddr, user, "pw", proxied, sc.cycle, stats, established.Done)
		}()
	}
	established.Wait()
	t.Logf("soak: %d sessions started", sc.sessions)

	var ackMu sync.Mutex
	acked := map[string]string{}
	for i := range sc.senders {
		rcpts := locals
		if i%2 == 0 {
			rcpts = busy
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				rcpt := rcpts[n%len(rcpts)]
				id := fmt.Sprintf("soak-%d-%d@soak.example", i, n)
				if err := sendOne(smtpAddr, rcpt, id); err != nil {
					stats.fail("smtp", err)
				} else {
					ackMu.Lock()
					acked["<"+id+">"] = rcpt
					ackMu.Unlock()
				}
				select {
				case <-ctx.Done():
				case <-time.After(sc.senderPause):
				}
			}
		}()
	}

	time.Sleep(min(10*time.Second, sc.duration/4)) // warm-up
	start := scrapeProcess(t, httpAddr)
	if hook := os.Getenv("MAILCAPTURETEST_SOAK_HOOK"); hook != "" {
		exec.Command("sh", "-c", hook).Run()
	}
	time.Sleep(sc.duration)
	end := scrapeProcess(t, httpAddr)
	checkDeclaredLabels(t, scrape(t, "http://"+httpAddr+"/metrics"))
	stop()
	wg.Wait()

	stats.mu.Lock()
	t.Logf("soak: %s, %d IMAP sessions (%d proxied, %d local), %d SMTP senders, captures of %d×%d messages",
		sc.duration, sc.sessions, sc.sessions/2, sc.sessions-sc.sessions/2, sc.senders, len(busy), sc.captureMessages)
	t.Logf("soak: %d IMAP commands, %d SMTP messages acknowledged, proxied sessions ended by the server: %v", stats.commands.Load(), len(acked), stats.ended)
	for _, what := range []string{"local SELECT", "local FETCH"} {
		l := stats.latencies[what]
		t.Logf("soak: %s: %d, p50 %s, p99 %s, max %s", what, len(l), percentile(l, 0.5), percentile(l, 0.99), percentile(l, 1))
	}
	for _, k := range []string{"go_goroutines", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes"} {
		t.Logf("soak: serve %s: %.0f after warm-up, %.0f at the end", k, start[k], end[k])
	}
	for e, n := range stats.errors {
		t.Errorf("soak: %d× %s", n, e)
	}
	for name, v := range end {
		if strings.HasPrefix(name, "mailcapture_session_panics_total") && v > 0 {
			t.Errorf("soak: %s = %.0f", name, v)
		}
	}
	stats.mu.Unlock()
	logMu.Lock()
	for m, n := range logged {
		if strings.HasPrefix(m, "ERROR") {
			t.Errorf("soak: serve logged %d× %s", n, m)
		} else {
			t.Logf("soak: serve logged %d× %s", n, m)
		}
	}
	logMu.Unlock()

	// The end: the queue drains, then the invariants.
	for i := 0; ; i++ {
		_, out, _ := runCLI(t, environ, "status", "--config", path, "--json")
		if strings.Contains(out, `"messages": 0,`) && strings.Contains(out, `"spool"`) {
			break
		}
		if i == 3000 {
			t.Fatalf("the relay queue did not drain in 5 minutes: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	child.Process.Kill() // what a kill leaves must be right too
	child.Wait()
	checkSoak(t, d, dataDir, acked, locals, busy)
	// A proxied session ends only at its account's cut-over, once.
	st, err := store.Open(context.Background(), dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	perAccount := sc.sessions / 2 / len(busy)
	for _, name := range busy {
		acct, err := st.Account(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("soak: %s is %s", name, acct.State)
		if n := stats.ended[name]; n > 0 && (acct.State != store.StateCaptured || n > perAccount) {
			t.Errorf("soak: %d proxied sessions of %s (%d of them, %s) ended by the server", n, name, perAccount, acct.State)
		}
	}
}

// soakSession is one IMAP client: log in, then SELECT INBOX, FETCH flags
// and a few bodies, NOOP, once per cycle, until ctx ends. A proxied
// session ended by a cut-over logs in again.
func soakSession(ctx context.Context, addr, user, pass string, proxied bool, cycle time.Duration, stats *soakStats, ready func()) {
	kind := "local"
	if proxied {
		kind = "proxied"
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	// endOrFail: a proxied session the server closed (at a cut-over it
	// says BYE between two commands) is counted for the account and
	// checked at the end; anything else is an error.
	endOrFail := func(what string, err error) {
		// imapclient reports a BYE between two commands as the next
		// command's write on the connection it closed.
		if proxied && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "BYE")) {
			stats.sessionEnded(user)
			return
		}
		stats.fail(what, err)
	}
	first := true
	for ctx.Err() == nil {
		c, err := imapclient.DialInsecure(addr, nil)
		if err == nil {
			err = c.Login(user, pass).Wait()
		}
		if first {
			ready()
			first = false
		}
		if err != nil {
			stats.fail(kind+" login", err)
			if c != nil {
				c.Close()
			}
			time.Sleep(cycle)
			continue
		}
		for ctx.Err() == nil {
			t0 := time.Now()
			sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
			if err != nil {
				endOrFail(kind+" SELECT", err)
				break
			}
			if !proxied {
				stats.latency("local SELECT", time.Since(t0))
			}
			if sel.NumMessages > 0 {
				lo := 1 + r.Uint32N(sel.NumMessages)
				hi := min(sel.NumMessages, lo+4)
				var set imap.SeqSet
				set.AddRange(lo, hi)
				t0 = time.Now()
				_, err = c.Fetch(set, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
				if err != nil {
					endOrFail(kind+" FETCH", err)
					break
				}
				if !proxied {
					stats.latency("local FETCH", time.Since(t0))
				}
			}
			if err := c.Noop().Wait(); err != nil {
				endOrFail(kind+" NOOP", err)
				break
			}
			stats.commands.Add(3)
			select {
			case <-ctx.Done():
			case <-time.After(cycle/2 + time.Duration(r.Int64N(int64(cycle)))):
			}
		}
		c.Close()
	}
}

// scrapeProcess reads serve's process and runtime figures from /metrics.
func scrapeProcess(t *testing.T, httpAddr string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(scrape(t, "http://"+httpAddr+"/metrics"), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = v
		}
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkSoak checks the invariants after the soak: every acknowledged
// message is stored exactly once: in the local INBOX for local accounts;
// for the capture accounts in their legacy INBOX, or, once one is cut
// over, delivered locally (a copy the capture took of a legacy message is
// not a second delivery). What the captures stored is exact.
func checkSoak(t *testing.T, d *legacytest.Dovecot, dataDir string, acked map[string]string, locals, busy []string) {
	t.Helper()
	counts := map[string]int{}
	for _, name := range locals {
		for _, id := range storedMessageIDs(t, dataDir, name) {
			counts[id]++
		}
	}
	for _, name := range busy {
		for _, m := range d.Snapshot(t, name, "pw")["INBOX"].Messages {
			counts[headerValue(string(m.Body), "Message-ID")]++
		}
		for _, m := range storedMessages(t, dataDir, name) {
			if m.LegacyUID == 0 {
				counts[m.MessageID]++
			}
		}
	}
	bad := 0
	for id := range acked {
		if counts[id] != 1 {
			bad++
			if bad <= 10 {
				t.Errorf("acknowledged message %s stored %d times", id, counts[id])
			}
		}
	}
	st, err := store.Open(context.Background(), dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, name := range busy {
		for _, p := range partialCopyProblems(t, st, d, name, "pw") {
			t.Error(p)
		}
	}
	t.Logf("soak: %d acknowledged messages checked, %d not stored exactly once", len(acked), bad)
}
