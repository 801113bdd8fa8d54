package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"mailcapture/capture"
	"mailcapture/cutover"
	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/pop3store"
	"mailcapture/store"
	"mailcapture/storetest"
)

const (
	user     = "pop@example.org"
	password = "front secret"
)

type pop3Fixture struct {
	d       *legacytest.Dovecot
	st      *store.Store
	sched   *capture.Scheduler
	backend *POP3Backend
	addr    string
	ended   chan struct{} // a front-end session ended
}

func startPOP3Front(t *testing.T) *pop3Fixture {
	t.Helper()
	d := legacytest.Start(t, legacytest.Options{UIDLFormat: "%g"})
	d.AddUser(t, user, password)
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(50, 12, 20000)}})
	st := storetest.Open(t, "")
	imapEP := legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second}
	popEP := legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: 10 * time.Second}
	sched := &capture.Scheduler{Engine: &capture.Engine{Store: st, IMAP: imapEP, POP3: popEP}}
	ctx, cancel := context.WithCancel(context.Background())
	schedDone := make(chan struct{})
	go func() {
		sched.Run(ctx)
		close(schedDone)
	}()
	t.Cleanup(func() {
		cancel()
		<-schedDone
	})
	router := &Router{Store: st, Scheduler: sched}
	ended := make(chan struct{}, 16)
	backend := &POP3Backend{Router: router, Local: &pop3store.Backend{Store: st}, Legacy: popEP}
	srv := &pop3.Server{Backend: backend, SessionEnded: func() { ended <- struct{}{} }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &pop3Fixture{d: d, st: st, sched: sched, backend: backend, addr: ln.Addr().String(), ended: ended}
}

// TestPOP3FrontFetchmailAcrossCapture: fetchmail (keep mode, UIDL) first
// reaches the legacy server through the front end, which records the
// account and captures it; once the account is served from the store,
// fetchmail's next run finds nothing new.
func TestPOP3FrontFetchmailAcrossCapture(t *testing.T) {
	f := startPOP3Front(t)
	ctx := context.Background()
	fetch, out := legacytest.Fetchmail(t, f.addr, user, password)
	if code := fetch(); code != 0 {
		t.Fatalf("first run through the front end: exit %d", code)
	}
	if files, _ := os.ReadDir(out); len(files) != 12 {
		t.Fatalf("first run delivered %d messages, want 12", len(files))
	}
	// The login recorded the account and started its capture.
	acct, err := f.st.Account(ctx, user)
	if err != nil || acct.State != store.StateCapturing {
		t.Fatalf("account after the first login: %+v %v", acct, err)
	}
	select {
	case <-f.sched.Submit(user, password, true): // joins the running job
	case <-time.After(60 * time.Second):
		t.Fatal("the capture did not finish")
	}
	if st, _ := f.sched.Status(user); st.State != capture.JobReady {
		t.Fatalf("capture job %+v", st)
	}
	// The cut-over's end, done by hand here: from now on the store serves.
	storetest.MarkCaptured(t, f.st, user)
	if code := fetch(); code != 1 {
		t.Fatalf("run after the switch: exit %d, want 1 (no new mail)", code)
	}
	if files, _ := os.ReadDir(out); len(files) != 12 {
		t.Fatalf("after the switch fetchmail has %d messages, want 12: it fetched again", len(files))
	}
	// Python's poplib sees the same maildrop at the legacy server and here.
	if legacy, local := poplibView(t, f.d.POP3Addr), poplibView(t, f.addr); legacy != local {
		t.Fatalf("poplib sees different maildrops:\nlegacy:\n%s\nmailcapture:\n%s", legacy, local)
	}
	// The local maildrop is what the legacy maildrop was.
	c, err := pop3.Dial(ctx, f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	local, _ := c.UIDL()
	lc, _ := pop3.Dial(ctx, f.d.POP3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	defer lc.Close()
	lc.Login(user, password)
	legacy, _ := lc.UIDL()
	if fmt.Sprint(local) != fmt.Sprint(legacy) {
		t.Fatalf("UIDLs differ:\nlocal  %v\nlegacy %v", local, legacy)
	}
}

// TestPOP3FrontRefusesBadPassword: the legacy server's refusal reaches the
// client as -ERR [AUTH] and nothing is recorded.
func TestPOP3FrontRefusesBadPassword(t *testing.T) {
	f := startPOP3Front(t)
	c, err := pop3.Dial(context.Background(), f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var perr *pop3.Error
	if err := c.Login(user, "wrong"); !errors.As(err, &perr) || perr.Code != "AUTH" {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := f.st.Account(context.Background(), user); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused login created the account: %v", err)
	}
}

// TestPOP3FrontCutSessionDeletesNothing: a proxied session that ends
// without QUIT leaves the legacy maildrop whole.
func TestPOP3FrontCutSessionDeletesNothing(t *testing.T) {
	f := startPOP3Front(t)
	c, err := pop3.Dial(context.Background(), f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	c.Dele(1)
	c.Dele(2)
	c.Close()
	// Once the front end has ended the cut session, its legacy session is
	// closed too (with no DELE sent).
	select {
	case <-f.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the front end did not end the cut session")
	}
	// A second proxied session, DELE and QUIT: that one deletes.
	c2, err := pop3.Dial(context.Background(), f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Login(user, password); err != nil {
		t.Fatal(err)
	}
	n, _, _ := c2.Stat()
	if n != 12 {
		t.Fatalf("the cut session deleted messages: %d left of 12", n)
	}
	c2.Dele(1)
	if err := c2.Quit(); err != nil {
		t.Fatal(err)
	}
	lc, _ := pop3.Dial(context.Background(), f.d.POP3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	defer lc.Close()
	if err := lc.Login(user, password); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := lc.Stat(); n != 11 {
		t.Fatalf("legacy has %d messages after DELE and QUIT through the front end, want 11", n)
	}
}

// poplibView lists UIDL, size and SHA-256 of every message as poplib sees
// them (TOP with a huge line count: the whole message, without RETR's
// side effects on the legacy server).
func poplibView(t *testing.T, addr string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	script := fmt.Sprintf(`
import hashlib, poplib
p = poplib.POP3(%q, %s, timeout=10)
p.user(%q)
p.pass_(%q)
for line in p.uidl()[1]:
    n, uidl = line.decode().split()
    size = p.list(int(n)).decode().split()[2]
    lines = p.top(int(n), 100000)[1]
    print(uidl, size, hashlib.sha256(b"\r\n".join(lines)).hexdigest())
p.quit()
`, host, port, user, password)
	out, err := exec.Command("python3", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("poplib against %s: %v\n%s", addr, err, out)
	}
	return string(out)
}

// TestCutoverLetsPOP3SessionsFinish: a proxied POP3 session open at the
// cut-over may finish (its QUIT deletes at the legacy server, before the
// final sync); one that overstays the grace period is cut and its DELEs
// are rolled back.
func TestCutoverLetsPOP3SessionsFinish(t *testing.T) {
	f := startPOP3Front(t)
	ctx := context.Background()
	c, err := pop3.Dial(ctx, f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.sched.Submit(user, password, true):
	case <-time.After(60 * time.Second):
		t.Fatal("the capture did not finish")
	}
	b := f.backend
	cut := &cutover.Cutover{Store: f.st, Sync: f.sched.Engine, POP3: b, POP3Grace: time.Minute}
	done := make(chan error, 1)
	go func() { done <- cut.Run(ctx, user, password) }()
	// The session is still served from the legacy server and finishes.
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lc, _ := pop3.Dial(ctx, f.d.POP3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	defer lc.Close()
	lc.Login(user, password)
	n, _, _ := lc.Stat()
	acct, _ := f.st.Account(ctx, user)
	_, drop, _ := f.st.Maildrop(ctx, acct.ID)
	if n != 11 || len(drop) != 11 || acct.State != store.StateCaptured {
		t.Fatalf("after the cut-over: legacy %d, local %d messages (want 11 each), state %s", n, len(drop), acct.State)
	}
}

// TestCutoverCutsOverstayingPOP3Session: past the grace period the
// session is cut; its DELE never reaches the legacy server.
func TestCutoverCutsOverstayingPOP3Session(t *testing.T) {
	f := startPOP3Front(t)
	ctx := context.Background()
	c, err := pop3.Dial(ctx, f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.sched.Submit(user, password, true):
	case <-time.After(60 * time.Second):
		t.Fatal("the capture did not finish")
	}
	cut := &cutover.Cutover{Store: f.st, Sync: f.sched.Engine, POP3: f.backend, POP3Grace: 200 * time.Millisecond}
	if err := cut.Run(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err == nil {
		t.Fatal("QUIT of the cut session succeeded")
	}
	acct, _ := f.st.Account(ctx, user)
	_, drop, _ := f.st.Maildrop(ctx, acct.ID)
	if len(drop) != 12 || acct.State != store.StateCaptured {
		t.Fatalf("after cutting the session: %d local messages (want 12), state %s", len(drop), acct.State)
	}
}

// TestPOP3TemporaryLegacyFailure: a legacy POP3 server that answers a
// login -ERR [SYS/TEMP] gives the user -ERR [SYS/TEMP], is counted as a
// legacy error, and no failed login is counted.
func TestPOP3TemporaryLegacyFailure(t *testing.T) {
	f := startPOP3Front(t)
	obs := &countingObserver{}
	f.backend.Router.Observer = obs
	f.backend.Legacy.Address = fakeLineServer(t, "+OK fake", func(w io.Writer, line string) bool {
		switch cmd := strings.ToUpper(line); {
		case strings.HasPrefix(cmd, "PASS"):
			io.WriteString(w, "-ERR [SYS/TEMP] Temporary authentication failure.\r\n")
		case cmd == "CAPA":
			io.WriteString(w, "+OK\r\nUSER\r\nRESP-CODES\r\n.\r\n")
		default:
			io.WriteString(w, "+OK\r\n")
		}
		return true
	})
	c, err := pop3.Dial(context.Background(), f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Login(user, password)
	var perr *pop3.Error
	if !errors.As(err, &perr) || perr.Code != "SYS/TEMP" {
		t.Fatalf("login: %v, want -ERR [SYS/TEMP]", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.legacy[labels.LegacyUnavailable] != 1 || obs.logins[labels.LoginFailed] != 0 || obs.logins[labels.LoginUnavailable] != 1 {
		t.Fatalf("legacy errors %v, logins %v", obs.legacy, obs.logins)
	}
}
