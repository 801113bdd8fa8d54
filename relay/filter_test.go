package relay

import (
	"context"
	"strings"
	"testing"

	"mailcapture/store"
)

// TestSieveLoopGuardAndFailures: a redirected copy carries the account's
// mark, and a message that comes back with it is kept, not redirected
// again; a script that cannot be compiled leaves the message in INBOX
// and the account's last error says why.
func TestSieveLoopGuardAndFailures(t *testing.T) {
	f := start(t, func(b *Backend) {
		b.Outbound = true
		b.Filters = &Filters{Store: b.Store, Delimiter: "+"}
	})
	ctx := context.Background()
	local, err := f.st.Account(ctx, "local@example.org")
	if err != nil {
		t.Fatal(err)
	}
	put := func(script string) { activeScript(t, f.st, local.ID, script) }
	put(`redirect "someone@elsewhere.example";`)
	out := f.smtplib(t, `
send(["local@example.org"], "first@example.net")
s.mail("a@example.net")
rcpt("local@example.org")
print("DATA", s.data("X-Sieve-Redirected-From: local@example.org\r\nMessage-ID: <back@example.net>\r\nSubject: back\r\n\r\nhello\r\n")[0])
`)
	if strings.Count(out, "DATA 250") != 2 {
		t.Fatalf("smtplib said:\n%s", out)
	}
	spooled, err := f.st.Spooled(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(spooled) != 1 || spooled[0].Route != store.RouteOutbound || spooled[0].MessageID != "<first@example.net>" {
		t.Fatalf("spooled: %+v, want the first message once, for the outbound relay", spooled)
	}
	inbox := f.localInbox(t, "local@example.org")
	if len(inbox) != 1 || !strings.Contains(inbox[0], "<back@example.net>") {
		t.Fatalf("INBOX holds %d messages, want the one that came back", len(inbox))
	}
	if _, lastErr, _ := f.st.SieveState(ctx, local.ID); !strings.Contains(lastErr, "a loop") {
		t.Fatalf("last error %q", lastErr)
	}

	put(`require "fileinto"; fileinto "x"`) // no semicolon
	if out := f.smtplib(t, `send(["local@example.org"], "broken@example.net")`); !strings.Contains(out, "DATA 250") {
		t.Fatalf("smtplib said:\n%s", out)
	}
	if inbox := f.localInbox(t, "local@example.org"); len(inbox) != 2 || !strings.Contains(inbox[1], "<broken@example.net>") {
		t.Fatalf("INBOX holds %d messages, want the one the broken script could not file", len(inbox))
	}
	if _, lastErr, _ := f.st.SieveState(ctx, local.ID); !strings.Contains(lastErr, `script "s"`) {
		t.Fatalf("last error %q", lastErr)
	}
}

// TestHeldMailIsFiltered: mail held during a cut-over goes where the
// account's script says once it is released: filed with its flags, or
// dropped by a discard.
func TestHeldMailIsFiltered(t *testing.T) {
	var mx *Backend
	f := start(t, func(b *Backend) {
		b.Filters = &Filters{Store: b.Store, Delimiter: "+"}
		mx = b
	})
	ctx := context.Background()
	moving, err := f.st.Account(ctx, "moving@example.org")
	if err != nil {
		t.Fatal(err)
	}
	lists, err := f.st.CreateMailbox(ctx, moving.ID, store.MailboxSpec{Name: "Lists"})
	if err != nil {
		t.Fatal(err)
	}
	script := `require ["fileinto", "imap4flags"];
if header :contains "Subject" "drop" { discard; stop; }
fileinto :flags "\\Flagged" "Lists";`
	activeScript(t, f.st, moving.ID, script)
	out := f.smtplib(t, `
send(["moving@example.org"], "keep@example.net")
s.mail("a@example.net")
rcpt("moving@example.org")
print("DATA", s.data("Message-ID: <gone@example.net>\r\nSubject: drop\r\n\r\nhello\r\n")[0])
`)
	if strings.Count(out, "DATA 250") != 2 {
		t.Fatalf("smtplib said:\n%s", out)
	}
	if held, _ := f.st.Held(ctx, moving.ID); len(held) != 2 {
		t.Fatalf("held: %d, want 2", len(held))
	}
	n, err := f.st.ReleaseHeldPlaced(ctx, moving.ID, mx.PlaceHeld)
	if err != nil || n != 1 {
		t.Fatalf("release: %d %v, want 1 delivered", n, err)
	}
	msgs, err := f.st.Messages(ctx, lists.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].MessageID != "<keep@example.net>" || strings.Join(msgs[0].Flags, " ") != `\Flagged` {
		t.Fatalf("Lists after the release: %+v", msgs)
	}
	if inbox := f.localInbox(t, "moving@example.org"); len(inbox) != 0 {
		t.Fatalf("INBOX holds %d messages", len(inbox))
	}
	if held, _ := f.st.Held(ctx, moving.ID); len(held) != 0 {
		t.Fatalf("still held: %d", len(held))
	}
}

// activeScript gives an account one script, active.
func activeScript(t *testing.T, st *store.Store, accountID int64, script string) {
	t.Helper()
	if err := st.ReplaceSieveScripts(context.Background(), accountID, []store.SieveScript{{Name: "s", Script: []byte(script), Active: true}}, store.SieveCopied); err != nil {
		t.Fatal(err)
	}
}

// TestRedirectThatCannotGoIsKept: a redirect with no way out (the legacy
// server retired, no outbound relay) leaves its copy in INBOX; nothing
// acknowledged is lost.
func TestRedirectThatCannotGoIsKept(t *testing.T) {
	f := start(t, func(b *Backend) {
		b.Retired = func() bool { return true }
		b.Filters = &Filters{Store: b.Store, Delimiter: "+"}
	})
	ctx := context.Background()
	local, err := f.st.Account(ctx, "local@example.org")
	if err != nil {
		t.Fatal(err)
	}
	activeScript(t, f.st, local.ID, `redirect "someone@elsewhere.example";`)
	if out := f.smtplib(t, `send(["local@example.org"], "stays@example.net")`); !strings.Contains(out, "DATA 250") {
		t.Fatalf("smtplib said:\n%s", out)
	}
	if inbox := f.localInbox(t, "local@example.org"); len(inbox) != 1 || !strings.Contains(inbox[0], "<stays@example.net>") {
		t.Fatalf("INBOX holds %d messages, want the one whose redirect could not go", len(inbox))
	}
	if spooled, _ := f.st.Spooled(ctx); len(spooled) != 0 {
		t.Fatalf("spooled: %+v", spooled)
	}
}
