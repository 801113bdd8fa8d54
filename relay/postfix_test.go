package relay

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/storetest"
)

// TestRelayThroughPostfix: the legacy side is a real Postfix delivering
// into Dovecot. Postfix's RCPT-time refusal of an unknown user reaches the
// sender at RCPT time; accepted mail is relayed through Postfix and is
// read back from the Dovecot mailbox.
func TestRelayThroughPostfix(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, "legacy@example.org", "pw")
	pf := legacytest.StartPostfix(t, legacytest.PostfixOptions{LMTPAddr: d.LMTPAddr, Domain: "example.org", Users: []string{"legacy@example.org"}})
	st := storetest.Open(t, "")
	legacy := Legacy{Endpoint: legacyclient.Endpoint{Address: pf.Addr, Timeout: 10 * time.Second}, Protocol: "smtp", Hostname: "mx.example.org"}
	srv := smtp.NewServer(&Backend{Store: st, Domains: []string{"example.org"}, Legacy: legacy, Hostname: "mx.example.org"})
	srv.Domain = "mx.example.org"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f := &fixture{d: d, st: st, addr: ln.Addr().String(), queue: &Queue{Store: st, Legacy: legacy}}

	out := f.smtplib(t, `
s.mail("a@example.net")
rcpt("nobody@example.org")
s.rset()
send(["legacy@example.org"], "via-postfix@example.net")
`)
	if out != "RCPT nobody@example.org 550\nRCPT legacy@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	f.queue.pass(ctx)
	if n, _, _ := st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages after the relay to Postfix", n)
	}
	// Postfix delivers on its own time: wait (bounded) for its queue to
	// empty.
	for i := 0; pf.Queued() > 0; i++ {
		if i == 500 {
			t.Fatalf("Postfix still holds %d messages", pf.Queued())
		}
		time.Sleep(10 * time.Millisecond)
	}
	snap := d.Snapshot(t, "legacy@example.org", "pw")
	if msgs := snap["INBOX"].Messages; len(msgs) != 1 || !strings.Contains(string(msgs[0].Body), "Message-ID: <via-postfix@example.net>") ||
		!strings.Contains(string(msgs[0].Body), "by mx.example.org (mailcapture)") {
		t.Fatalf("legacy INBOX: %d messages", len(msgs))
	}
}
