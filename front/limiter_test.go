package front

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"mailcapture/legacytest"
)

func TestLoginLimiterWindow(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := &LoginLimiter{PerAddress: 4, PerAccount: 2, Window: time.Minute, now: func() time.Time { return now }}
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1")}
	b := &net.TCPAddr{IP: net.ParseIP("192.0.2.2")}
	l.Failed(a, "ann")
	l.Failed(a, "ANN")
	if l.Allow(b, "ann") {
		t.Fatal("a third try for the account allowed (from another address)")
	}
	if !l.Allow(a, "bob") {
		t.Fatal("another account refused after 2 failures from the address")
	}
	l.Failed(a, "bob")
	l.Failed(a, "carl")
	if l.Allow(a, "dave") {
		t.Fatal("a fifth try from the address allowed")
	}
	now = now.Add(61 * time.Second)
	if !l.Allow(a, "ann") {
		t.Fatal("still refused after the window")
	}
}

// TestIMAPFrontLimitsPasswordGuessing: after the account's allowance of
// failures, even the right password is refused, and the legacy server
// sees no more attempts.
func TestIMAPFrontLimitsPasswordGuessing(t *testing.T) {
	var proxy *legacytest.Proxy
	f := startIMAPFront(t, nil, func(fr *IMAPFront, d *legacytest.Dovecot) {
		fr.Router.Limiter = &LoginLimiter{PerAccount: 3}
		proxy = legacytest.StartProxy(t, d.IMAPAddr)
		fr.Legacy.Address = proxy.Addr
	})
	tr := dialTranscript(t, f.addr)
	for i := 0; i < 3; i++ {
		tr.send(fmt.Sprintf("a%d LOGIN %s wrong%d", i, imapUser, i))
		tr.expect(fmt.Sprintf("a%d NO [AUTHENTICATIONFAILED]", i))
	}
	if n := proxy.Accepted(); n != 3 {
		t.Fatalf("the legacy server saw %d attempts, want 3", n)
	}
	tr.send(fmt.Sprintf("b LOGIN %s %q", imapUser, password))
	if line := tr.expect("b NO "); !strings.Contains(line, "[UNAVAILABLE]") {
		t.Fatalf("after the allowance: %q", line)
	}
	if n := proxy.Accepted(); n != 3 {
		t.Fatalf("the refused attempt reached the legacy server (%d connections)", n)
	}
}
