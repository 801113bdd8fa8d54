package relay

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// swaks runs swaks against the front end and returns its transcript and
// whether it succeeded.
func (f *fixture) swaks(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	out, err := exec.Command("swaks", append([]string{"--server", f.addr, "--helo", "sender.example.net", "--timeout", "20"}, args...)...).CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("swaks: %v", err)
	}
	return string(out), err == nil
}

// tail is the end of a transcript, enough to show what went wrong.
func tail(s string) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-25):], "\n")
}

// TestSwaks: a real MTA test client sees a good MTA: the ESMTP extensions,
// STARTTLS and PIPELINING deliveries on both routes, 554 for a domain not
// hosted, 552 for a message over SIZE.
func TestSwaks(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	out, _ := f.swaks(t, "--quit-after", "EHLO")
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 1048576", "STARTTLS", "ENHANCEDSTATUSCODES"} {
		if !strings.Contains(out, "250-"+ext) && !strings.Contains(out, "250 "+ext) {
			t.Errorf("EHLO lacks %s:\n%s", ext, out)
		}
	}
	if out, ok := f.swaks(t, "-tls", "--from", "a@example.net", "--to", "local@example.org",
		"--header", "Message-Id: <swaks-local@example.net>", "--body", "over STARTTLS"); !ok || !strings.Contains(out, "TLS started") {
		t.Fatalf("STARTTLS delivery to the local route failed:\n%s", tail(out))
	}
	if got := f.localInbox(t, "local@example.org"); len(got) != 1 || !strings.Contains(got[0], "<swaks-local@example.net>") {
		t.Fatalf("local INBOX: %d messages", len(got))
	}
	if out, ok := f.swaks(t, "--pipeline", "--from", "a@example.net", "--to", "legacy@example.org",
		"--header", "Message-Id: <swaks-legacy@example.net>", "--body", "pipelined"); !ok {
		t.Fatalf("pipelined delivery to the legacy route failed:\n%s", tail(out))
	}
	f.queue.pass(ctx)
	snap := f.d.Snapshot(t, "legacy@example.org", "pw")
	if msgs := snap["INBOX"].Messages; len(msgs) != 1 || !strings.Contains(string(msgs[0].Body), "<swaks-legacy@example.net>") {
		t.Fatalf("legacy INBOX: %d messages", len(msgs))
	}
	if out, ok := f.swaks(t, "--from", "a@example.net", "--to", "someone@elsewhere.example"); ok || !strings.Contains(out, "554 5.7.1") {
		t.Fatalf("open relay attempt:\n%s", tail(out))
	}
	big := filepath.Join(t.TempDir(), "big.eml")
	os.WriteFile(big, []byte("Subject: big\r\n\r\n"+strings.Repeat(strings.Repeat("y", 76)+"\r\n", 20000)), 0o600)
	if out, ok := f.swaks(t, "--from", "a@example.net", "--to", "local@example.org", "--data", big); ok || !strings.Contains(out, "552 5.3.4") {
		t.Fatalf("a message over SIZE:\n%s", tail(out))
	}
	if got := f.localInbox(t, "local@example.org"); len(got) != 1 {
		t.Fatalf("local INBOX after the refusals: %d messages", len(got))
	}
}
