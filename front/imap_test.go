package front

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/capture"
	"mailcapture/imapstore"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

const imapUser = "imap@example.org"

type imapFixture struct {
	d     *legacytest.Dovecot
	st    *store.Store
	sched *capture.Scheduler
	addr  string
	front *IMAPFront
}

func startIMAPFront(t *testing.T, trusted func(net.Addr) bool, configure ...func(*IMAPFront, *legacytest.Dovecot)) *imapFixture {
	t.Helper()
	d := legacytest.Start(t, legacytest.Options{Separator: ".", Prefix: "INBOX."})
	d.AddUser(t, imapUser, password)
	msgs := legacytest.Generate(70, 40, 20000)
	d.Populate(t, imapUser, password, []legacytest.Folder{
		{Name: "INBOX", Subscribed: true, Messages: msgs[:25], Expunge: []int{1}},
		{Name: "Sent", Subscribed: true, Messages: msgs[25:35]},
		{Name: "Projects/2023", Messages: msgs[35:]},
	})
	st := storetest.Open(t, "")
	imapEP := legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second}
	sched := &capture.Scheduler{Engine: &capture.Engine{Store: st, IMAP: imapEP}}
	ctx, cancel := context.WithCancel(context.Background())
	schedDone := make(chan struct{})
	go func() {
		sched.Run(ctx)
		close(schedDone)
	}()
	front := &IMAPFront{Router: &Router{Store: st, Scheduler: sched}, Local: imapstore.NewServer(st, imapstore.Options{}), Legacy: imapEP, Trusted: trusted}
	for _, c := range configure {
		c(front, d)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go front.Serve(ln)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		front.Shutdown(sctx)
		cancel()
		<-schedDone
	})
	return &imapFixture{d: d, st: st, sched: sched, addr: ln.Addr().String(), front: front}
}

// transcript drives a raw connection line by line, as mox's tests do.
type transcript struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialTranscript(t *testing.T, addr string) *transcript {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tr := &transcript{t: t, c: c, r: bufio.NewReader(c)}
	tr.expect("* OK ")
	return tr
}

func (tr *transcript) send(line string) { fmt.Fprintf(tr.c, "%s\r\n", line) }

func (tr *transcript) expect(prefix string) string {
	tr.t.Helper()
	tr.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := tr.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		tr.t.Fatalf("got %q (%v), want %q...", line, err, prefix)
	}
	return line
}

func TestIMAPFrontPreauth(t *testing.T) {
	f := startIMAPFront(t, nil)
	tr := dialTranscript(t, f.addr)
	tr.send("a CAPABILITY")
	if caps := tr.expect("* CAPABILITY "); !strings.Contains(caps, "AUTH=PLAIN") || !strings.Contains(caps, "SASL-IR") || !strings.Contains(caps, "LITERAL+") {
		t.Fatalf("capabilities %q", caps)
	}
	tr.expect("a OK")
	tr.send("b ID (\"name\" \"test\")")
	tr.expect("* ID ")
	tr.expect("b OK")
	tr.send("c NOOP")
	tr.expect("c OK")
	tr.send("e LOGIN only-one-arg")
	tr.expect("e BAD")
	tr.send("f SELECT INBOX")
	tr.expect("f BAD")
	tr.send(strings.Repeat("x", 50000))
	tr.expect("* BAD line too long") // no tag to answer with
	// RFC 2971's limits: 30 fields, values of 1,024 bytes.
	var id strings.Builder
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&id, " \"field%02d\" \"%s\"", i, strings.Repeat("v", 1024))
	}
	tr.send("id1 ID (" + id.String()[1:] + ")")
	tr.expect("* ID ")
	tr.expect("id1 OK")
	tr.send("id2 ID (" + id.String()[1:] + " \"one\" \"more\")")
	tr.expect("id2 BAD")
	tr.send("g AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+imapUser+"\x00wrong")))
	tr.expect("g NO [AUTHENTICATIONFAILED]")
	// LOGIN with a synchronising literal for the password.
	tr.send(fmt.Sprintf("h LOGIN %s {%d}", imapUser, len(password)))
	tr.expect("+ ")
	tr.send(password)
	tr.expect("h OK ")
	tr.send("i SELECT INBOX")
	tr.expect("* ") // the legacy server answers from here on
	tr.send("j LOGOUT")

	// AUTHENTICATE PLAIN without initial response, and LITERAL+.
	tr2 := dialTranscript(t, f.addr)
	tr2.send("k AUTHENTICATE PLAIN")
	tr2.expect("+ ")
	tr2.send(base64.StdEncoding.EncodeToString([]byte("\x00" + imapUser + "\x00" + password)))
	tr2.expect("k OK ")
	tr3 := dialTranscript(t, f.addr)
	tr3.send(fmt.Sprintf("l LOGIN {%d+}", len(imapUser)))
	tr3.send(fmt.Sprintf("%s \"%s\"", imapUser, password))
	tr3.expect("l OK ")
}

// TestIMAPFrontEndsNonIMAPPeers: a peer that does not speak IMAP (an HTTP
// request sent to the IMAP port, a cross-protocol attack) is cut at its
// first line with * BYE, and counted; so is an unknown command.
func TestIMAPFrontEndsNonIMAPPeers(t *testing.T) {
	obs := &countingObserver{}
	f := startIMAPFront(t, nil, func(fr *IMAPFront, _ *legacytest.Dovecot) { fr.Router.Observer = obs })
	for _, first := range []string{"GET / HTTP/1.1", "a FROBNICATE", "\x16\x03\x01\x02\x00\x01\x00"} {
		tr := dialTranscript(t, f.addr)
		tr.send(first)
		tr.expect("* BYE ")
		tr.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if rest, err := io.ReadAll(tr.r); err != nil || len(rest) != 0 {
			t.Fatalf("after %q: the connection stayed open (%v, %q)", first, err, rest)
		}
	}
	if n := obs.count("unknown_command"); n != 3 {
		t.Errorf("unknown commands counted: %d, want 3", n)
	}
}

// TestLoginCapabilitiesAreTheSessions: the OK of a login the local server
// takes over lists what its CAPABILITY lists.
func TestLoginCapabilitiesAreTheSessions(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	if _, err := f.st.CreateAccount(ctx, "local@example.org", "pw", store.StateCaptured); err != nil {
		t.Fatal(err)
	}
	tr := dialTranscript(t, f.addr)
	tr.send("a LOGIN local@example.org pw")
	ok := tr.expect("a OK [CAPABILITY ")
	tr.send("b CAPABILITY")
	caps := tr.expect("* CAPABILITY ")
	tr.expect("b OK")
	got := strings.TrimSuffix(strings.TrimPrefix(ok, "a OK [CAPABILITY "), "] logged in\r\n")
	if want := strings.TrimSuffix(strings.TrimPrefix(caps, "* CAPABILITY "), "\r\n"); got != want {
		t.Fatalf("LOGIN said %q, CAPABILITY says %q", got, want)
	}
}

func TestIMAPFrontRefusesPlaintextFromUntrusted(t *testing.T) {
	f := startIMAPFront(t, func(net.Addr) bool { return false })
	tr := dialTranscript(t, f.addr)
	tr.send("a CAPABILITY")
	if caps := tr.expect("* CAPABILITY "); !strings.Contains(caps, "LOGINDISABLED") || strings.Contains(caps, "AUTH=PLAIN") {
		t.Fatalf("capabilities without TLS from an untrusted peer: %q", caps)
	}
	tr.expect("a OK")
	tr.send(fmt.Sprintf("b LOGIN %s %q", imapUser, password))
	tr.expect("b NO [PRIVACYREQUIRED]")
	if _, err := f.st.Account(context.Background(), imapUser); err == nil {
		t.Fatal("a refused plaintext login reached the legacy server")
	}
}

// TestIMAPFrontAcrossCapture: the first login goes to the legacy server
// (and starts the capture); once the account is captured, logins are
// served by the local server, which shows the client the same mailbox.
// mbsync, synced before the switch, transfers nothing after it.
func TestIMAPFrontAcrossCapture(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	mbsync := legacytest.MbsyncConfig(t, dir, f.addr, imapUser, password)
	if out, err := exec.Command("mbsync", "-c", mbsync, "-a").CombinedOutput(); err != nil {
		t.Fatalf("mbsync through the front end (legacy route): %v\n%s", err, out)
	}
	before := maildirFiles(t, filepath.Join(dir, "mail"))
	if len(before) != 39 {
		t.Fatalf("mbsync pulled %d messages, want 39", len(before))
	}
	acct, err := f.st.Account(ctx, imapUser)
	if err != nil || acct.State != store.StateCapturing {
		t.Fatalf("account after the first login: %+v %v", acct, err)
	}
	f.waitCaptured(t, imapUser, password)
	// The cut-over's end, by hand here.
	storetest.MarkCaptured(t, f.st, imapUser)

	c, err := imapclient.DialInsecure(f.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(imapUser, password).Wait(); err != nil {
		t.Fatal(err)
	}
	local := legacytest.SnapshotIMAP(t, c)
	legacy := f.d.Snapshot(t, imapUser, password)
	for name, lf := range legacy {
		lo := local[name]
		if lo == nil || lo.UIDValidity != lf.UIDValidity || len(lo.Messages) != len(lf.Messages) || strings.Join(lo.Attrs, " ") != strings.Join(lf.Attrs, " ") {
			t.Fatalf("folder %q differs through the front end: local %+v legacy %+v", name, summary(lo), summary(lf))
		}
		for i := range lf.Messages {
			if lo.Messages[i].UID != lf.Messages[i].UID || !bytes.Equal(lo.Messages[i].Body, lf.Messages[i].Body) ||
				strings.Join(lo.Messages[i].Flags, " ") != strings.Join(lf.Messages[i].Flags, " ") {
				t.Fatalf("folder %q message %d differs through the front end", name, i)
			}
		}
	}
	if out, err := exec.Command("mbsync", "-c", mbsync, "-a").CombinedOutput(); err != nil {
		t.Fatalf("mbsync through the front end (local route): %v\n%s", err, out)
	}
	after := maildirFiles(t, filepath.Join(dir, "mail"))
	if strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("mbsync changed the local Maildir after the switch:\nbefore %d files\nafter %d files", len(before), len(after))
	}
}

// maildirFiles lists the message files of a Maildir tree.
func maildirFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && (strings.Contains(path, "/cur/") || strings.Contains(path, "/new/")) {
			rel, _ := filepath.Rel(root, path)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func summary(f *legacytest.SnapshotFolder) string {
	if f == nil {
		return "missing"
	}
	return fmt.Sprintf("attrs %v uidvalidity %d messages %d", f.Attrs, f.UIDValidity, len(f.Messages))
}

// TestIMAPFrontSTARTTLS: an untrusted peer sees LOGINDISABLED until
// STARTTLS, then logs in over TLS.
func TestIMAPFrontSTARTTLS(t *testing.T) {
	serverTLS, clientTLS := legacytest.SelfSignedTLS(t)
	f := startIMAPFront(t, func(net.Addr) bool { return false }, func(fr *IMAPFront, _ *legacytest.Dovecot) { fr.TLSConfig = serverTLS })
	clientTLS.ServerName = ""
	c, err := imapclient.DialStartTLS(f.addr, &imapclient.Options{TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Caps().Has("LOGINDISABLED") {
		t.Fatal("LOGINDISABLED after STARTTLS")
	}
	if err := c.Login(imapUser, password).Wait(); err != nil {
		t.Fatal(err)
	}
	if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 24 {
		t.Fatalf("SELECT over STARTTLS: %+v %v", sel, err)
	}
}

// waitCaptured waits for the account's capture job (joining it) to end
// converged and verified.
func (f *imapFixture) waitCaptured(t *testing.T, account, pass string) {
	t.Helper()
	select {
	case <-f.sched.Submit(account, pass, true):
	case <-time.After(60 * time.Second):
		t.Fatal("the capture did not finish")
	}
	if st, _ := f.sched.Status(account); st.State != capture.JobReady {
		t.Fatalf("capture job %+v", st)
	}
}

// TestProxiedSessionOutlivesWriteTimeout: the write timeout bounds each
// write to the client, not the session: a proxied session goes on long
// after it (it once ended a minute after login, at its first answer past
// the login's write deadline).
func TestProxiedSessionOutlivesWriteTimeout(t *testing.T) {
	const writeTimeout = 200 * time.Millisecond
	f := startIMAPFront(t, nil, func(front *IMAPFront, _ *legacytest.Dovecot) { front.WriteTimeout = writeTimeout })
	c, err := imapclient.DialInsecure(f.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(imapUser, password).Wait(); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		// Time past the write timeout is what this test is about.
		time.Sleep(2 * writeTimeout)
		sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatalf("round %d: SELECT %s after the write timeout: %v", round, 2*writeTimeout*time.Duration(round+1), err)
		}
		msgs, err := c.Fetch(imap.SeqSetNum(1, sel.NumMessages), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		if err != nil || len(msgs) != 2 {
			t.Fatalf("round %d: FETCH: %d messages, %v", round, len(msgs), err)
		}
	}
}

// TestAuthenticateLogin: AUTHENTICATE LOGIN (what Outlook and many phones
// send), with and without an initial response, through the proxy and
// locally; a challenge-response mechanism is not offered and gets NO.
func TestAuthenticateLogin(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	if _, err := f.st.CreateAccount(ctx, "local@example.org", "pw", store.StateCaptured); err != nil {
		t.Fatal(err)
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, c := range []struct{ user, pass string }{{imapUser, password}, {"local@example.org", "pw"}} {
		tr := dialTranscript(t, f.addr)
		tr.send("a CAPABILITY")
		if caps := tr.expect("* CAPABILITY "); !strings.Contains(caps, "AUTH=LOGIN") || strings.Contains(caps, "CRAM") {
			t.Fatalf("capabilities %q", caps)
		}
		tr.expect("a OK")
		tr.send("b AUTHENTICATE CRAM-MD5")
		tr.expect("b NO ")
		tr.send("c AUTHENTICATE LOGIN")
		tr.expect("+ " + b64("Username:"))
		tr.send(b64(c.user))
		tr.expect("+ " + b64("Password:"))
		tr.send(b64(c.pass))
		tr.expect("c OK ")
		tr2 := dialTranscript(t, f.addr)
		tr2.send("d AUTHENTICATE LOGIN " + b64(c.user))
		tr2.expect("+ " + b64("Password:"))
		tr2.send(b64("wrong"))
		tr2.expect("d NO [AUTHENTICATIONFAILED]")
	}
}
