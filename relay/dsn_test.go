package relay

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"mailcapture/store"
)

// localInbox returns the bodies in a captured account's INBOX.
func (f *fixture) localInbox(t *testing.T, account string) []string {
	t.Helper()
	ctx := context.Background()
	acct, err := f.st.Account(ctx, account)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := f.st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		body, err := f.st.ReadBody(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(body))
	}
	return out
}

// TestHopLimit: a message carrying max_hops Received headers is a loop:
// 554 5.4.6 at DATA; one hop fewer is accepted (our own Received makes
// it one more).
func TestHopLimit(t *testing.T) {
	f := start(t, func(b *Backend) { b.MaxHops = 5 })
	out := f.smtplib(t, `
def hops(n):
    s.mail("a@example.net")
    rcpt("local@example.org")
    code, msg = s.data("".join("Received: from hop%d\r\n" % i for i in range(n)) + "Subject: loop\r\n\r\nround and round\r\n")
    print("DATA", code, msg.decode()[:5])
hops(5)
hops(4)
`)
	if want := "RCPT local@example.org 250\nDATA 554 5.4.6\nRCPT local@example.org 250\nDATA 250 2.0.0\n"; out != want {
		t.Fatalf("smtplib said:\n%s\nwant:\n%s", out, want)
	}
	if got := f.localInbox(t, "local@example.org"); len(got) != 1 || strings.Count(got[0], "Received:") != 5 {
		t.Fatalf("local INBOX: %d messages", len(got))
	}
}

// TestDSNForRefusalAfterAcceptance: the legacy server accepted the
// recipient at RCPT time but refuses it at relay time (the user was
// removed in between): the sender gets a DSN, relayed to the legacy
// server like any message, and the spool empties.
func TestDSNForRefusalAfterAcceptance(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	out := f.smtplib(t, `
s.mail("sender@example.org")
rcpt("legacy@example.org")
code, msg = s.data("Message-ID: <gone@example.org>\r\nSubject: to be refused\r\n\r\nhello\r\n")
print("DATA", code)
`)
	if out != "RCPT legacy@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	f.d.RemoveUser(t, "legacy@example.org")
	f.queue.pass(ctx) // the refusal, and the DSN spooled
	f.queue.pass(ctx) // the DSN relayed
	if n, _, _ := f.st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages after the bounce", n)
	}
	snap := f.d.Snapshot(t, "sender@example.org", "pw")
	if len(snap["INBOX"].Messages) != 1 {
		t.Fatalf("the sender's legacy INBOX has %d messages, want the DSN", len(snap["INBOX"].Messages))
	}
	dsn := string(snap["INBOX"].Messages[0].Body)
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; legacy@example.org",
		"Action: failed", "Status: 5.", "Message-ID: <gone@example.org>"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("the DSN lacks %q:\n%s", want, dsn)
		}
	}
}

// TestDSNWhenLifetimeEnds: mail the legacy server could not take before
// its lifetime ended is returned with status 4.4.7; a captured sender
// finds the DSN in its local INBOX.
func TestDSNWhenLifetimeEnds(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	out := f.smtplib(t, `
s.mail("local@example.org")
rcpt("legacy@example.org")
code, msg = s.data("Message-ID: <late@example.org>\r\nSubject: never delivered\r\n\r\nhello\r\n")
print("DATA", code)
`)
	if out != "RCPT legacy@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	f.d.Stop()
	f.queue.pass(ctx) // down: deferred, within its lifetime
	if n, _, _ := f.st.SpoolStats(ctx); n != 1 {
		t.Fatalf("spool holds %d messages, want the deferred one", n)
	}
	if got := f.localInbox(t, "local@example.org"); len(got) != 0 {
		t.Fatalf("a DSN before the lifetime ended: %q", got)
	}
	f.queue.Lifetime = time.Nanosecond
	due, _ := f.st.Spooled(ctx)
	f.queue.deliver(ctx, due[0]) // the retry, after the lifetime
	if n, _, _ := f.st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages after expiry", n)
	}
	got := f.localInbox(t, "local@example.org")
	if len(got) != 1 || !strings.Contains(got[0], "Status: 4.4.7") || !strings.Contains(got[0], "Final-Recipient: rfc822; legacy@example.org") ||
		!strings.Contains(got[0], "Message-ID: <late@example.org>") {
		t.Fatalf("local INBOX after expiry: %q", got)
	}
}

// TestDataTimeout: a sender that trickles its DATA past the data timeout
// is cut off with 421 4.4.2 (it retries later) and nothing is stored.
func TestDataTimeout(t *testing.T) {
	obs := &countingObserver{results: map[string]int{}}
	f := start(t, func(b *Backend) { b.DataTimeout, b.Observer = 300*time.Millisecond, obs })
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	expect := func(prefix string) string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %q: %v", prefix, err)
			}
			if len(line) >= 4 && line[3] == '-' {
				continue // a continuation line
			}
			if !strings.HasPrefix(line, prefix) {
				t.Fatalf("got %q, want %q", line, prefix)
			}
			return line
		}
	}
	expect("220 ")
	for _, step := range [][2]string{{"EHLO slow.example.net", "250 "}, {"MAIL FROM:<a@example.net>", "250 "},
		{"RCPT TO:<local@example.org>", "250 "}, {"DATA", "354 "}} {
		fmt.Fprintf(c, "%s\r\n", step[0])
		expect(step[1])
	}
	fmt.Fprintf(c, "Subject: slow\r\n\r\nthe first line, then nothing")
	expect("421 4.4.2")
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("the connection stayed open after the data timeout")
	}
	if got := f.localInbox(t, "local@example.org"); len(got) != 0 {
		t.Fatalf("a cut-off message was stored: %d", len(got))
	}
	if obs.results["refused/smtp_data_timeout"] != 1 {
		t.Fatalf("the data timeout was not counted: %v", obs.results)
	}
}
