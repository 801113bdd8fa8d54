package front

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailcapture/labels"
	"mailcapture/legacytest"
)

// countingObserver counts refusals by limit.
type countingObserver struct {
	mu       sync.Mutex
	refusals map[labels.Limit]int
	legacy   map[labels.LegacyKind]int
	logins   map[labels.LoginResult]int
}

func (o *countingObserver) Login(_ labels.Protocol, _ labels.Route, result labels.LoginResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.logins == nil {
		o.logins = map[labels.LoginResult]int{}
	}
	o.logins[result]++
}
func (o *countingObserver) SessionStarted(labels.Protocol, labels.Route) {}
func (o *countingObserver) SessionEnded(labels.Protocol, labels.Route)   {}
func (o *countingObserver) Refused(limit labels.Limit) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refusals == nil {
		o.refusals = map[labels.Limit]int{}
	}
	o.refusals[limit]++
}
func (o *countingObserver) LegacyError(kind labels.LegacyKind) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.legacy == nil {
		o.legacy = map[labels.LegacyKind]int{}
	}
	o.legacy[kind]++
}
func (o *countingObserver) count(limit labels.Limit) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refusals[limit]
}

// TestHostileClientsBeforeLogin: a command trickled in byte by byte
// (slowloris) is cut at the pre-auth timeout, oversized lines and literals
// get BAD without being buffered, and password guessing across many
// accounts from one address stops at the per-address allowance; each is
// counted by its limit, and the legacy server sees only the allowed tries.
func TestHostileClientsBeforeLogin(t *testing.T) {
	obs := &countingObserver{}
	var proxy *legacytest.Proxy
	f := startIMAPFront(t, nil, func(fr *IMAPFront, d *legacytest.Dovecot) {
		fr.PreauthTimeout = 400 * time.Millisecond
		fr.Router.Observer = obs
		fr.Router.Limiter = &LoginLimiter{PerAddress: 3, PerAccount: 2}
		proxy = legacytest.StartProxy(t, d.IMAPAddr)
		fr.Legacy.Address = proxy.Addr
	})

	// Slowloris: one byte every 100 ms never completes a command in time.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n') // greeting
	go func() {
		for _, b := range []byte("a LOGIN someone@example.org trickle\r\n") {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := r.ReadString('\n')
	if !strings.HasPrefix(line, "* BYE [UNAVAILABLE] autologout") {
		t.Fatalf("slowloris got %q", line)
	}
	// Closed: the end of the stream, or a reset when the server's close
	// met the trickle's next byte.
	if rest, err := io.ReadAll(r); err != nil && !errors.Is(err, syscall.ECONNRESET) || len(rest) > 0 {
		t.Fatalf("slowloris connection not closed: %v %q", err, rest)
	}
	if obs.count("timeout") != 1 {
		t.Errorf("timeouts counted: %d", obs.count("timeout"))
	}

	// Oversized line and literal: BAD, the session goes on.
	tr := dialTranscript(t, f.addr)
	tr.send("a LOGIN " + strings.Repeat("x", 9000) + " pw")
	tr.expect("a BAD") // tagged: the client knows which command failed
	tr.send("z ID (\"name\" \"" + strings.Repeat("y", 50000) + "\")")
	tr.expect("z BAD line too long")
	tr.send("b LOGIN {9000}")
	tr.expect("b BAD")
	tr.send("c NOOP")
	tr.expect("c OK")
	if obs.count("line_length") != 3 {
		t.Errorf("oversized commands counted: %d", obs.count("line_length"))
	}

	// Guessing across accounts from one address: 3 tries reach the legacy
	// server (which slows failures down itself), then every attempt is
	// refused before it.
	for i := 0; i < 8; i++ {
		tr.send(fmt.Sprintf("g%d LOGIN user%d@example.org wrong", i, i))
		line := tr.expect(fmt.Sprintf("g%d NO", i))
		if limited := strings.Contains(line, "[UNAVAILABLE]"); limited != (i >= 3) {
			t.Fatalf("attempt %d: %q", i, line)
		}
	}
	if n := proxy.Accepted(); n != 3 {
		t.Errorf("the legacy server saw %d attempts, want 3", n)
	}
	if obs.count("failed_logins") != 5 {
		t.Errorf("refusals by failed_logins: %d", obs.count("failed_logins"))
	}
}

// fakeLineServer is a fake legacy server on a loopback port: it greets,
// then gives each line the client sends to answer, which writes the reply
// and returns false to drop the connection. It stops with the test.
func fakeLineServer(t *testing.T, greeting string, answer func(w io.Writer, line string) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				io.WriteString(c, greeting+"\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil || !answer(c, strings.TrimSpace(line)) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// fakeLegacyIMAP answers every login with answer (after greeting and
// CAPABILITY), or with OK once *recovered is set; an empty answer drops
// the connection at the LOGIN.
func fakeLegacyIMAP(t *testing.T, answer string, recovered *atomic.Bool) string {
	t.Helper()
	return fakeLineServer(t, "* OK fake legacy ready", func(w io.Writer, line string) bool {
		tag, rest, _ := strings.Cut(line, " ")
		switch {
		case strings.HasPrefix(strings.ToUpper(rest), "CAPABILITY"):
			io.WriteString(w, "* CAPABILITY IMAP4rev1 LITERAL+\r\n"+tag+" OK done\r\n")
		case recovered.Load():
			io.WriteString(w, tag+" OK logged in\r\n")
		case answer == "":
			return false
		default:
			io.WriteString(w, tag+" "+answer+"\r\n")
		}
		return true
	})
}

// TestTemporaryLegacyFailureIsNoLockout: when the legacy server cannot
// check a login now (NO [UNAVAILABLE] or [SERVERBUG], BYE, a dropped
// connection, an auth service down), the user gets NO [UNAVAILABLE], the
// failed-login limits count nothing, the failure shows as a legacy error,
// and the right password works as soon as the legacy server does.
func TestTemporaryLegacyFailureIsNoLockout(t *testing.T) {
	for _, answer := range []string{"NO [UNAVAILABLE] Temporary authentication failure.", "NO [SERVERBUG] Internal error", "BYE going down", ""} {
		t.Run(answer, func(t *testing.T) {
			obs := &countingObserver{}
			var recovered atomic.Bool
			fake := fakeLegacyIMAP(t, answer, &recovered)
			f := startIMAPFront(t, nil, func(fr *IMAPFront, _ *legacytest.Dovecot) {
				fr.Router.Observer = obs
				fr.Router.Limiter = &LoginLimiter{PerAddress: 2, PerAccount: 2}
				fr.Legacy.Address = fake
			})
			tr := dialTranscript(t, f.addr)
			for i := 0; i < 5; i++ {
				tr.send(fmt.Sprintf("a%d LOGIN %s %q", i, imapUser, password))
				tr.expect(fmt.Sprintf("a%d NO [UNAVAILABLE]", i))
			}
			if n := obs.count("failed_logins"); n != 0 {
				t.Fatalf("%d logins refused by the limits", n)
			}
			obs.mu.Lock()
			legacy, failed := obs.legacy[labels.LegacyUnavailable]+obs.legacy[labels.LegacyConnect], obs.logins[labels.LoginFailed]
			obs.mu.Unlock()
			if legacy != 5 || failed != 0 {
				t.Fatalf("legacy errors %d (want 5), failed logins %d (want 0)", legacy, failed)
			}
			// The legacy server is back: the right password works.
			recovered.Store(true)
			tr.send(fmt.Sprintf("b LOGIN %s %q", imapUser, password))
			tr.expect("b OK")
		})
	}
	t.Run("dovecot auth down", func(t *testing.T) {
		obs := &countingObserver{}
		f := startIMAPFront(t, nil, func(fr *IMAPFront, _ *legacytest.Dovecot) {
			fr.Router.Observer = obs
			fr.Router.Limiter = &LoginLimiter{PerAddress: 2, PerAccount: 2}
		})
		f.d.BreakPassdb(t, imapUser)
		tr := dialTranscript(t, f.addr)
		for i := 0; i < 3; i++ {
			tr.send(fmt.Sprintf("a%d LOGIN %s %q", i, imapUser, password))
			tr.expect(fmt.Sprintf("a%d NO [UNAVAILABLE]", i))
		}
		if n := obs.count("failed_logins"); n != 0 {
			t.Fatalf("%d logins refused by the limits", n)
		}
		f.d.RepairPassdb(t, imapUser)
		tr.send(fmt.Sprintf("b LOGIN %s %q", imapUser, password))
		tr.expect("b OK")
	})
}
