package front

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/legacytest"
)

// countingObserver counts refusals by limit.
type countingObserver struct {
	mu       sync.Mutex
	refusals map[string]int
}

func (o *countingObserver) Login(string, string, string)  {}
func (o *countingObserver) SessionStarted(string, string) {}
func (o *countingObserver) SessionEnded(string, string)   {}
func (o *countingObserver) Refused(limit string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refusals == nil {
		o.refusals = map[string]int{}
	}
	o.refusals[limit]++
}
func (o *countingObserver) count(limit string) int {
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
	if rest, err := io.ReadAll(r); err != nil {
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
