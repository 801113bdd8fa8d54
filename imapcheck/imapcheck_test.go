package imapcheck

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/front"
	"mailcapture/imapstore"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// checkTime is how long each server is checked: IMAPCHECK_TIME, 10s in
// make test.
func checkTime(t testing.TB) time.Duration {
	if v := os.Getenv("IMAPCHECK_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("IMAPCHECK_TIME: %v", err)
		}
		return d
	}
	return 10 * time.Second
}

func users(n int) []Credentials {
	var out []Credentials
	for i := 0; i < n; i++ {
		out = append(out, Credentials{Name: fmt.Sprintf("check%d@example.org", i), Password: fmt.Sprintf("pw-%d", i)})
	}
	return out
}

// startDovecot serves the users from a private Dovecot.
func startDovecot(t testing.TB, us []Credentials) string {
	d := legacytest.Start(t, legacytest.Options{ManySessions: true})
	for _, u := range us {
		d.AddUser(t, u.Name, u.Password)
	}
	return d.IMAPAddr
}

// panicLog records what the server logs at ERROR.
type panicLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *panicLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *panicLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "stack" {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *panicLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *panicLog) WithGroup(string) slog.Handler      { return l }

// startLocal serves the users, captured, from mailcapture's front end and
// local server over a fresh store. It returns the address and what was
// logged at ERROR, and counts panics.
func startLocal(t testing.TB, us []Credentials) (string, *panicLog, *int) {
	t.Helper()
	return startLocalIn(t, us, t.TempDir())
}

// startLocalIn is startLocal with the store in dir.
func startLocalIn(t testing.TB, us []Credentials, dir string) (string, *panicLog, *int) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dir, store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		acct, err := st.CreateAccount(ctx, u.Name, u.Password, store.StateCaptured)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", Subscribed: true}); err != nil {
			t.Fatal(err)
		}
	}
	logs := &panicLog{}
	log := slog.New(logs)
	panics := new(int)
	var mu sync.Mutex
	local := imapstore.NewServer(st, imapstore.Options{Log: log, Panicked: func() { mu.Lock(); *panics++; mu.Unlock() }})
	fr := &front.IMAPFront{Router: &front.Router{Store: st, Log: log}, Local: local, Log: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		fr.Serve(ln)
		close(done)
	}()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		fr.Shutdown(sctx)
		<-done
		st.Close()
	})
	return ln.Addr().String(), logs, panics
}

func logReport(t testing.TB, name string, r Report) {
	t.Logf("%s: %d commands in %v (%.0f/s), %d errors", name, r.Total(), r.Duration.Round(time.Millisecond), r.PerSecond(), r.ErrorCount())
	var cmds []string
	for c := range r.Commands {
		cmds = append(cmds, c)
	}
	sort.Strings(cmds)
	for _, c := range cmds {
		t.Logf("%s:   %-12s %6d  median %v", name, c, r.Commands[c], r.Median[c].Round(10*time.Microsecond))
	}
	for kind, n := range r.Errors {
		t.Logf("%s: error %s: %d", name, kind, n)
	}
	for _, s := range r.Samples[:min(len(r.Samples), 30)] {
		t.Logf("%s:   %s", name, s)
	}
}

// TestStress runs the checker against a private Dovecot and against
// mailcapture, 10 clients on 5 users each: both must show no error, and
// mailcapture must log no panic and no error.
func TestStress(t *testing.T) {
	us := users(5)
	cfg := Config{Users: us, Clients: 10, Duration: checkTime(t), Seed: 1, Messages: 20, Reconnects: true}
	for _, target := range []string{"dovecot", "mailcapture"} {
		t.Run(target, func(t *testing.T) {
			var logs *panicLog
			var panics *int
			if target == "dovecot" {
				cfg.Addr = startDovecot(t, us)
			} else {
				cfg.Addr, logs, panics = startLocal(t, us)
			}
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			logReport(t, target, r)
			if r.ErrorCount() > 0 {
				t.Errorf("%d consistency errors against %s", r.ErrorCount(), target)
			}
			if r.Total() < 100 {
				t.Errorf("only %d commands ran", r.Total())
			}
			if logs != nil {
				logs.mu.Lock()
				for _, l := range logs.lines {
					t.Errorf("mailcapture logged: %s", l)
				}
				logs.mu.Unlock()
				if *panics > 0 {
					t.Errorf("%d commands panicked", *panics)
				}
			}
		})
	}
}
