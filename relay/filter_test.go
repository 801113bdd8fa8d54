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
	put := func(script string) {
		t.Helper()
		if err := f.st.ReplaceSieveScripts(ctx, local.ID, []store.SieveScript{{Name: "s", Script: []byte(script), Active: true}}, store.SieveCopied); err != nil {
			t.Fatal(err)
		}
	}
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
