package relay

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
	"mailcapture/storetest"
)

// TestFullDiskGivesTemporaryError: with the local disk full, a message
// for either route gets 451 (the sender keeps it and retries), never a
// 5xx, and nothing half-written stays; once space is free the retry is
// accepted and stored once.
func TestFullDiskGivesTemporaryError(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, "legacy@example.org", "pw")
	dir := scratchfs.MustMount(t, 8)
	st := storetest.Open(t, filepath.Join(dir, "store"))
	a := storetest.Account(t, st, "local@example.org", "pw", store.StateCaptured)
	legacy := Legacy{Endpoint: legacyclient.Endpoint{Address: d.LMTPAddr, Timeout: 10 * time.Second}, Protocol: "lmtp", Hostname: "mx.example.org"}
	srv := smtp.NewServer(&Backend{Store: st, Domains: []string{"example.org"}, Legacy: legacy, Hostname: "mx.example.org"})
	srv.Domain = "mx.example.org"
	srv.MaxMessageBytes = 8 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	f := &fixture{d: d, st: st, addr: ln.Addr().String()}

	filler := filepath.Join(dir, "filler")
	scratchfs.Fill(t, dir, filler, 200<<10)
	script := `
big = "x" * 76 + "\r\n"
for to, mid in (("local@example.org", "full-local"), ("legacy@example.org", "full-legacy")):
    s.mail("a@example.net")
    rcpt(to)
    code, msg = s.data(("Message-ID: <%s@example.net>\r\nSubject: big\r\n\r\n" % mid) + big * 8000)
    print("DATA", code)
`
	if out := f.smtplib(t, script); out != "RCPT local@example.org 250\nDATA 451\nRCPT legacy@example.org 250\nDATA 451\n" {
		t.Fatalf("on a full disk, smtplib said:\n%s", out)
	}
	if n, _, _ := st.SpoolStats(ctx); n != 0 {
		t.Fatalf("a refused message is in the spool (%d)", n)
	}
	os.Remove(filler)
	if out := f.smtplib(t, script); out != "RCPT local@example.org 250\nDATA 250\nRCPT legacy@example.org 250\nDATA 250\n" {
		t.Fatalf("with space again, smtplib said:\n%s", out)
	}
	inbox, _ := st.MailboxByName(ctx, a.ID, "INBOX")
	msgs, _ := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if len(msgs) != 1 || msgs[0].MessageID != "<full-local@example.net>" {
		t.Fatalf("local INBOX: %+v", msgs)
	}
	if n, _, _ := st.SpoolStats(ctx); n != 1 {
		t.Fatalf("spool holds %d messages, want the relayed one", n)
	}
}
