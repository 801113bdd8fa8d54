package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

type fixture struct {
	d     *legacytest.Dovecot
	st    *store.Store
	addr  string
	queue *Queue
}

// start runs the SMTP front end before a Dovecot (LMTP) with three users:
// legacy@ is not captured, local@ is captured, moving@ is in cut-over.
func start(t *testing.T, configure ...func(*Backend)) *fixture {
	t.Helper()
	return startWith(t, legacytest.Options{}, configure...)
}

// startWith is start with a Dovecot configured by opts.
func startWith(t *testing.T, opts legacytest.Options, configure ...func(*Backend)) *fixture {
	t.Helper()
	d := legacytest.Start(t, opts)
	for _, u := range []string{"legacy", "local", "moving", "sender"} {
		d.AddUser(t, u+"@example.org", "pw")
	}
	st := storetest.Open(t, "")
	storetest.Account(t, st, "local@example.org", "pw", store.StateCaptured)
	storetest.Account(t, st, "moving@example.org", "pw", store.StateCutover)
	legacy := Legacy{Endpoint: legacyclient.Endpoint{Address: d.LMTPAddr, Timeout: 10 * time.Second}, Protocol: "lmtp", Hostname: "mx.example.org"}
	backend := &Backend{Store: st, Domains: []string{"example.org"}, Legacy: legacy, Hostname: "mx.example.org"}
	for _, c := range configure {
		c(backend)
	}
	srv := smtp.NewServer(backend)
	srv.Domain = "mx.example.org"
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	srv.TLSConfig, _ = legacytest.SelfSignedTLS(t)
	srv.MaxMessageBytes, srv.MaxRecipients = 1<<20, 10
	srv.EnableSMTPUTF8 = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &fixture{d: d, st: st, addr: ln.Addr().String(), queue: &Queue{Store: st, Legacy: legacy}}
}

// smtplib sends with Python's smtplib and prints each answer.
func (f *fixture) smtplib(t *testing.T, script string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(f.addr)
	full := fmt.Sprintf(`
import smtplib
s = smtplib.SMTP(%q, %s, timeout=30)
s.ehlo("sender.example.net")
def rcpt(addr):
    code, msg = s.rcpt(addr)
    print("RCPT", addr, code)
def send(to, msgid):
    s.mail("a@example.net")
    for t in to:
        rcpt(t)
    code, msg = s.data("Message-ID: <%%s>\r\nSubject: hi\r\n\r\nhello\r\n" %% msgid)
    print("DATA", code)
%s
s.quit()
`, host, port, script)
	out, err := exec.Command("python3", "-c", full).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	return string(out)
}

// TestRoutingAtRcptTime: a domain not hosted is refused (554), an
// address the legacy server does not know gets its refusal at RCPT (550),
// and recipients of different routes share a transaction.
func TestRoutingAtRcptTime(t *testing.T) {
	f := start(t)
	out := f.smtplib(t, `
s.mail("a@example.net")
rcpt("someone@elsewhere.example")
rcpt("nobody@example.org")
rcpt("local@example.org")
rcpt("legacy@example.org")
s.rset()
`)
	want := "RCPT someone@elsewhere.example 554\nRCPT nobody@example.org 550\nRCPT local@example.org 250\nRCPT legacy@example.org 250\n"
	if out != want {
		t.Fatalf("smtplib said:\n%s\nwant:\n%s", out, want)
	}
}

// TestWhereMailLands: each message lands where its recipient's state says,
// checked by reading the legacy and the local mailboxes.
func TestWhereMailLands(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	out := f.smtplib(t, `
send(["legacy@example.org"], "m1@example.net")
send(["local@example.org"], "m2@example.net")
send(["moving@example.org"], "m3@example.net")
`)
	if out != "RCPT legacy@example.org 250\nDATA 250\nRCPT local@example.org 250\nDATA 250\nRCPT moving@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	// Local: in the store at once.
	local, _ := f.st.Account(ctx, "local@example.org")
	inbox, _ := f.st.MailboxByName(ctx, local.ID, "INBOX")
	msgs, _ := f.st.Messages(ctx, inbox.ID, store.AllUIDs)
	if len(msgs) != 1 || msgs[0].MessageID != "<m2@example.net>" {
		t.Fatalf("local delivery: %+v", msgs)
	}
	body, _ := f.st.ReadBody(msgs[0].ID)
	if !strings.HasPrefix(string(body), "Received: from sender.example.net") {
		t.Fatalf("no Received header: %.80q", body)
	}
	// Legacy: spooled, then relayed by the queue.
	if n, _, _ := f.st.SpoolStats(ctx); n != 2 {
		t.Fatalf("spool holds %d messages, want 2 (one to relay, one held)", n)
	}
	f.queue.pass(ctx)
	snap := f.d.Snapshot(t, "legacy@example.org", "pw")
	if len(snap["INBOX"].Messages) != 1 || !strings.Contains(string(snap["INBOX"].Messages[0].Body), "Message-ID: <m1@example.net>") {
		t.Fatalf("legacy INBOX after the relay: %d messages", len(snap["INBOX"].Messages))
	}
	// Held: delivered when the cut-over ends.
	moving, _ := f.st.Account(ctx, "moving@example.org")
	if n, err := f.st.ReleaseHeld(ctx, moving.ID); err != nil || n != 1 {
		t.Fatalf("release held: %d %v", n, err)
	}
	if n, _, _ := f.st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool not empty after relay and release: %d", n)
	}
	// Nothing reached the legacy server twice.
	f.queue.pass(ctx)
	if snap := f.d.Snapshot(t, "legacy@example.org", "pw"); len(snap["INBOX"].Messages) != 1 {
		t.Fatalf("legacy INBOX has %d messages after a second pass", len(snap["INBOX"].Messages))
	}
}

// TestLegacyDownGivesTemporaryError: with the legacy server unreachable,
// an unknown recipient gets 451 4.4.1, never a 5xx.
func TestLegacyDownGivesTemporaryError(t *testing.T) {
	f := start(t)
	f.d.Stop()
	out := f.smtplib(t, `
s.mail("a@example.net")
rcpt("legacy@example.org")
s.rset()
`)
	if out != "RCPT legacy@example.org 451\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
}

// TestSpooledMailFollowsTheCutover: mail spooled for the legacy server
// whose recipient went into cut-over before the queue got to it is held
// (in the spool, for that recipient only: the others of the message still
// go to the legacy server) and delivered locally when the cut-over ends;
// for a recipient already captured it is delivered locally at once.
// Checked in the legacy and the local mailboxes.
func TestSpooledMailFollowsTheCutover(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	out := f.smtplib(t, `
send(["legacy@example.org"], "m1@example.net")
send(["legacy@example.org", "sender@example.org"], "m2@example.net")
`)
	if out != "RCPT legacy@example.org 250\nDATA 250\nRCPT legacy@example.org 250\nRCPT sender@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	acct := storetest.Account(t, f.st, "legacy@example.org", "pw", store.StateCutover)
	f.queue.pass(ctx)
	if n := len(f.d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages); n != 0 {
		t.Fatalf("the legacy server got %d messages for an account in cut-over", n)
	}
	if got := f.d.Snapshot(t, "sender@example.org", "pw")["INBOX"].Messages; len(got) != 1 || !strings.Contains(string(got[0].Body), "<m2@example.net>") {
		t.Fatalf("the other recipient's legacy INBOX: %d messages", len(got))
	}
	held, err := f.st.Held(ctx, acct.ID)
	if err != nil || len(held) != 2 {
		t.Fatalf("held for the account in cut-over: %d (%v), want 2", len(held), err)
	}
	if err := f.st.Transition(ctx, acct.Name, store.StateCutover, store.StateCaptured); err != nil {
		t.Fatal(err)
	}
	if n, err := f.st.ReleaseHeld(ctx, acct.ID); err != nil || n != 2 {
		t.Fatalf("release held: %d %v", n, err)
	}
	got := f.localInbox(t, acct.Name)
	if len(got) != 2 || !strings.Contains(got[0], "<m1@example.net>") || !strings.Contains(got[1], "<m2@example.net>") {
		t.Fatalf("local INBOX after the cut-over: %d messages", len(got))
	}

	// Spooled for the legacy server, the recipient captured meanwhile:
	// delivered locally by the next pass.
	out = f.smtplib(t, `send(["sender@example.org"], "m3@example.net")`)
	if out != "RCPT sender@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	storetest.Account(t, f.st, "sender@example.org", "pw", store.StateCaptured)
	f.queue.pass(ctx)
	if got := f.localInbox(t, "sender@example.org"); len(got) != 1 || !strings.Contains(got[0], "<m3@example.net>") {
		t.Fatalf("local INBOX of the captured recipient: %d messages", len(got))
	}
	if n := len(f.d.Snapshot(t, "sender@example.org", "pw")["INBOX"].Messages); n != 1 {
		t.Fatalf("the legacy server has %d messages for sender@, want only m2", n)
	}
	if n, _, _ := f.st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages at the end", n)
	}
}

// TestHeldAfterTheReleaseIsDelivered: a message held for an account whose
// cut-over ended (and released its held mail) before the message was
// spooled is delivered locally by the queue's next pass, not left held.
func TestHeldAfterTheReleaseIsDelivered(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	acct := storetest.Account(t, f.st, "legacy@example.org", "pw", store.StateCutover)
	if err := f.st.Transition(ctx, acct.Name, store.StateCutover, store.StateCaptured); err != nil {
		t.Fatal(err)
	}
	if n, err := f.st.ReleaseHeld(ctx, acct.ID); err != nil || n != 0 {
		t.Fatalf("release held: %d %v", n, err)
	}
	// What a DATA whose RCPT saw the cut-over spools after the release.
	raw := "Message-ID: <late@example.net>\r\nSubject: late\r\n\r\nheld too late\r\n"
	if _, err := f.st.Enqueue(ctx, store.RouteHold, acct.ID, store.Envelope{From: "s@example.net", To: []string{acct.Name}}, strings.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	f.queue.pass(ctx)
	if got := f.localInbox(t, acct.Name); len(got) != 1 || !strings.Contains(got[0], "<late@example.net>") {
		t.Fatalf("local INBOX: %d messages", len(got))
	}
	if n, _, _ := f.st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages", n)
	}
}

// TestQuiesceWaitsForDeliveries: a cut-over's wait returns only once no
// delivery to the account is in progress.
func TestQuiesceWaitsForDeliveries(t *testing.T) {
	q := &Queue{}
	leave := q.active.enter([]string{"a@example.org", "b@example.org"})
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := q.Quiesce(short, "a@example.org"); err == nil {
		t.Fatal("Quiesce returned while a delivery to the account was in progress")
	}
	if err := q.Quiesce(context.Background(), "c@example.org"); err != nil {
		t.Fatalf("Quiesce for an account with nothing in progress: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- q.Quiesce(context.Background(), "b@example.org") }()
	leave()
	if err := <-done; err != nil {
		t.Fatalf("Quiesce after the delivery ended: %v", err)
	}
}

// TestNonSMTPPeersAreCut: an HTTP request sent to the SMTP port is cut at
// once (as Postfix's smtpd_forbidden_commands does), a client that keeps
// sending unknown commands after a few; both are counted.
func TestNonSMTPPeersAreCut(t *testing.T) {
	obs := &countingObserver{results: map[string]int{}}
	var mu sync.Mutex
	backend := &Backend{Domains: []string{"example.org"}, Hostname: "mx.example.org", Observer: lockedObserver{&mu, obs}}
	srv := smtp.NewServer(backend)
	srv.Domain = "mx.example.org"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(backend.CountRefusals(ln))
	defer srv.Close()
	session := func(lines ...string) string {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		for _, l := range lines {
			io.WriteString(c, l+"\r\n")
		}
		// The server closes with our lines unread: a reset is a close too.
		all, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the session was not closed: %v (%q)", err, all)
		}
		return string(all)
	}
	if out := session("GET / HTTP/1.1", "Host: mx.example.org", ""); !strings.Contains(out, "221 2.7.0") {
		t.Fatalf("HTTP request: %q", out)
	}
	if out := session("FOO", "BAR", "BAZ", "QUX", "NOOP"); !strings.Contains(out, "Too many errors") {
		t.Fatalf("unknown commands: %q", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := obs.results["refused/unknown_command"]; n != 2 {
		t.Fatalf("unknown commands counted %d times, want 2 (%v)", n, obs.results)
	}
}

// lockedObserver serialises an observer used from many sessions.
type lockedObserver struct {
	mu  *sync.Mutex
	obs *countingObserver
}

func (o lockedObserver) SMTPMessage(route labels.SMTPRoute, result labels.SMTPResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.obs.SMTPMessage(route, result)
}

func (o lockedObserver) Refused(limit labels.Limit) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.obs.Refused(limit)
}

// TestLocalDeliveryToSeveralIsAtomic: a local delivery to three captured
// accounts whose second recipient cannot take it (its INBOX is gone) gets
// 451 and leaves no copy in any INBOX; the sender's retry delivers exactly
// one copy to each.
func TestLocalDeliveryToSeveralIsAtomic(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	var names []string
	for _, n := range []string{"r1", "r2", "r3"} {
		names = append(names, storetest.Account(t, f.st, n+"@example.org", "pw", store.StateCaptured).Name)
	}
	acct, _ := f.st.Account(ctx, names[1])
	inbox, _ := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	if err := f.st.DeleteMailbox(ctx, inbox.ID); err != nil {
		t.Fatal(err)
	}
	msg := "Message-ID: <three@example.net>\r\nSubject: three\r\n\r\nto three\r\n"
	err := sendWith(t, f.addr, names, msg)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 {
		t.Fatalf("DATA with a recipient that cannot take it: %v, want 451", err)
	}
	for _, n := range []string{names[0], names[2]} {
		if got := f.localInbox(t, n); len(got) != 0 {
			t.Fatalf("%s holds %d copies after the 451", n, len(got))
		}
	}
	if _, err := f.st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX"}); err != nil {
		t.Fatal(err)
	}
	if err := sendWith(t, f.addr, names, msg); err != nil {
		t.Fatalf("retry: %v", err)
	}
	for _, n := range names {
		if got := f.localInbox(t, n); len(got) != 1 || !strings.Contains(got[0], "<three@example.net>") {
			t.Fatalf("%s holds %d copies after the retry", n, len(got))
		}
	}
}

// sendWith sends msg to rcpts over SMTP.
func sendWith(t *testing.T, addr string, rcpts []string, msg string) error {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("sender.example.net"); err != nil {
		return err
	}
	if err := c.Mail("s@example.net", nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	io.WriteString(w, msg)
	return w.Close()
}

// TestDrainEndsARecipientCheckStuckAtTheLegacyServer: a RCPT whose check
// waits at a legacy server that accepted the connection and never answers
// ends once Drain returns (451, the sender retries), not after the
// legacy timeout.
func TestDrainEndsARecipientCheckStuckAtTheLegacyServer(t *testing.T) {
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	reached := make(chan net.Conn, 1)
	go func() {
		c, err := hang.Accept()
		if err == nil {
			reached <- c
		}
	}()
	var backend *Backend
	f := start(t, func(b *Backend) {
		b.Legacy.Address, b.Legacy.Timeout = hang.Addr().String(), time.Hour
		backend = b
	})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	answer := func() string {
		t.Helper()
		var all string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", all, err)
			}
			all += line
			if len(line) < 4 || line[3] != '-' {
				return all
			}
		}
	}
	answer()
	for _, cmd := range []string{"EHLO sender.example.net", "MAIL FROM:<a@example.net>"} {
		io.WriteString(c, cmd+"\r\n")
		answer()
	}
	io.WriteString(c, "RCPT TO:<legacy@example.org>\r\n")
	select {
	case lc := <-reached:
		defer lc.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the recipient check never reached the legacy server")
	}
	stopped, cancel := context.WithCancel(context.Background())
	cancel() // the stop's grace period is over
	backend.Drain(stopped)
	if got := answer(); !strings.HasPrefix(got, "451 4.4.1") {
		t.Fatalf("RCPT during a stop: %q, want 451 4.4.1", got)
	}
}
