package pop3store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/store"
	"mailcapture/storetest"
)

const (
	user     = "pop@example.org"
	password = "s3cret pass"
)

var messages = [][]byte{
	[]byte("Subject: plain\r\n\r\nhello\r\n"),
	[]byte("Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"),
	[]byte("Subject: bare lf\n\nline one\nline two\n"),
	[]byte("Subject: long\r\n\r\n" + strings.Repeat("x", 100000) + "\r\nshort\r\n"),
	[]byte("Subject: no final newline\r\n\r\nlast line"),
	[]byte("Subject: top\r\nX-Header: yes\r\n\r\nbody 1\r\nbody 2\r\nbody 3\r\n"),
}

type fixture struct {
	st    *store.Store
	addr  string
	inbox store.Mailbox
	ended chan struct{} // a session ended
}

// start serves a captured account's maildrop from a fresh store.
func start(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st := storetest.Open(t, "")
	acct, _ := st.CreateAccount(ctx, user, password, store.StateCapturing)
	storetest.MarkCaptured(t, st, user)
	inbox, _ := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", UIDValidity: 42})
	b := st.NewBatch()
	for i, m := range messages {
		uidl := ""
		if i == 0 {
			uidl = "legacy-uidl-1"
		}
		if err := b.Add(ctx, store.NewMessage{MailboxID: inbox.ID, UID: uint32(i + 1), POP3UIDL: uidl}, bytes.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{}, 100)
	srv := &pop3.Server{Backend: storeLogin{&Backend{Store: st}}, Hostname: "mx.example.org", SessionEnded: func() { ended <- struct{}{} }}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &fixture{st: st, addr: ln.Addr().String(), inbox: inbox, ended: ended}
}

func (f *fixture) dial(t *testing.T) *pop3.Client {
	t.Helper()
	c, err := pop3.Dial(context.Background(), f.addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSessionWithByteExactClient(t *testing.T) {
	f := start(t)
	c := f.dial(t)
	caps, err := c.Capa()
	if err != nil || caps["UIDL"] == nil || caps["TOP"] == nil || caps["RESP-CODES"] == nil || caps["USER"] == nil {
		t.Fatalf("CAPA %v %v", caps, err)
	}
	var perr *pop3.Error
	if err := c.Login(user, "wrong"); !errors.As(err, &perr) || perr.Code != "AUTH" {
		t.Fatalf("wrong password: %v", err)
	}
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	// A second session while this one holds the maildrop.
	c2 := f.dial(t)
	if err := c2.AuthPlain(user, password); !errors.As(err, &perr) || perr.Code != "IN-USE" {
		t.Fatalf("second session: %v", err)
	}
	n, size, err := c.Stat()
	var want int64
	for _, m := range messages {
		want += int64(len(m))
	}
	if err != nil || n != len(messages) || size != want {
		t.Fatalf("STAT %d %d %v", n, size, err)
	}
	uidls, _ := c.UIDL()
	if uidls[0].UIDL != "legacy-uidl-1" || uidls[1].UIDL != "000000020000002a" {
		t.Fatalf("UIDL %v", uidls)
	}
	for i, m := range messages {
		r, err := c.Retr(i + 1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		want := m
		if i == 4 {
			want = append(append([]byte(nil), m...), "\r\n"...) // RFC 1939: the message ends with CRLF
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("message %d: %d bytes back, want %d: %q", i+1, len(got), len(want), truncate(got))
		}
	}
	r, _ := c.Top(6, 2)
	top, _ := io.ReadAll(r)
	if string(top) != "Subject: top\r\nX-Header: yes\r\n\r\nbody 1\r\nbody 2\r\n" {
		t.Fatalf("TOP 6 2: %q", top)
	}
	r, _ = c.Top(3, 0)
	top, _ = io.ReadAll(r)
	if string(top) != "Subject: bare lf\n\n" {
		t.Fatalf("TOP 3 0: %q", top)
	}
	// DELE then RSET undoes; DELE then QUIT deletes.
	c.Dele(2)
	if _, err := c.Retr(2); !errors.As(err, &perr) {
		t.Fatalf("RETR of a deleted message: %v", err)
	}
	if err := c.Rset(); err != nil {
		t.Fatal(err)
	}
	c.Dele(1)
	c.Dele(3)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	uids, _ := f.st.UIDs(context.Background(), f.inbox.ID)
	if fmt.Sprint(uids) != "[2 4 5 6]" {
		t.Fatalf("after QUIT: %v", uids)
	}
	// The lock is released at QUIT.
	c3 := f.dial(t)
	if err := c3.Login(user, password); err != nil {
		t.Fatal(err)
	}
}

func TestDroppedSessionDeletesNothing(t *testing.T) {
	f := start(t)
	c := f.dial(t)
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	c.Dele(1)
	c.Dele(2)
	c.Close() // no QUIT: no UPDATE state
	select {
	case <-f.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not end the dropped session")
	}
	c2 := f.dial(t)
	if err := c2.Login(user, password); err != nil {
		t.Fatalf("login after the dropped session: %v", err)
	}
	n, _, _ := c2.Stat()
	if n != len(messages) {
		t.Fatalf("%d messages after a dropped session, want %d", n, len(messages))
	}
}

// TestProtocolErrors: what a confused or hostile client sends gets the
// protocol's answer, and the session goes on; only an unknown command
// before the login ends it (a peer that does not speak POP3).
func TestProtocolErrors(t *testing.T) {
	f := start(t)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	r.ReadString('\n')
	exchange := func(line, want string) {
		t.Helper()
		fmt.Fprintf(conn, "%s\r\n", line)
		got, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(got, want) {
			t.Fatalf("%q: got %q (%v), want %q...", truncate([]byte(line)), got, err, want)
		}
	}
	exchange("STAT", "-ERR")
	exchange("PASS x", "-ERR send USER first")
	exchange(strings.Repeat("A", 5000), "-ERR line too long")
	exchange("AUTH CRAM-MD5", "-ERR unsupported mechanism")
	exchange("AUTH PLAIN !!!", "-ERR [AUTH] malformed")
	exchange("AUTH PLAIN", "+ ")
	exchange("*", "-ERR authentication cancelled")
	exchange("USER "+user, "+OK")
	exchange("PASS "+password, "+OK maildrop has 6 messages")
	exchange("RETR 0", "-ERR no such message")
	exchange("RETR 99", "-ERR no such message")
	exchange("RETR x", "-ERR no such message")
	exchange("TOP 1", "-ERR TOP needs")
	exchange("USER again", "-ERR already logged in")
	exchange("FROB", "-ERR")
	exchange("LIST 2", "+OK 2 ")
	exchange("NOOP", "+OK")
	exchange("QUIT", "+OK")

	stranger, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	stranger.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(stranger, "FROB\r\n")
	rest, err := io.ReadAll(stranger)
	if err != nil || !strings.Contains(string(rest), "\r\n-ERR") {
		t.Fatalf("unknown command before login: %q %v, want -ERR and the end of the session", rest, err)
	}
}

// TestPythonPoplib drives the server with Python's poplib.
func TestPythonPoplib(t *testing.T) {
	f := start(t)
	host, port, _ := net.SplitHostPort(f.addr)
	var sums []string
	for _, m := range messages[:2] {
		sums = append(sums, fmt.Sprintf("%x", sha256.Sum256(m)))
	}
	script := fmt.Sprintf(`
import hashlib, poplib
p = poplib.POP3(%q, %s, timeout=10)
p.user(%q)
p.pass_(%q)
count, size = p.stat()
print("stat", count, size)
print("uidl", p.uidl()[1][0].decode())
for n in (1, 2):
    resp, lines, octets = p.retr(n)
    print("sha", hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest())
p.dele(1)
print(p.quit().decode())
`, host, port, user, password)
	out, err := exec.Command("python3", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("poplib: %v\n%s", err, out)
	}
	want := fmt.Sprintf("stat 6 %d\nuidl 1 legacy-uidl-1\nsha %s\nsha %s\n+OK bye, 1 messages deleted\n", sumSizes(), sums[0], sums[1])
	if string(out) != want {
		t.Fatalf("poplib said:\n%s\nwant:\n%s", out, want)
	}
	if uids, _ := f.st.UIDs(context.Background(), f.inbox.ID); len(uids) != 5 {
		t.Fatalf("after poplib's DELE and QUIT: %v", uids)
	}
}

func sumSizes() int64 {
	var n int64
	for _, m := range messages {
		n += int64(len(m))
	}
	return n
}

// TestFetchmailKeepMode: fetchmail leaving mail on the server fetches
// every message once, then nothing on its next run (UIDLs are stable).
func TestFetchmailKeepMode(t *testing.T) {
	f := start(t)
	fetch, out := legacytest.Fetchmail(t, f.addr, user, password)
	if code := fetch(); code != 0 {
		t.Fatalf("first fetchmail run: exit %d", code)
	}
	files, _ := os.ReadDir(out)
	if len(files) != len(messages) {
		t.Fatalf("fetchmail delivered %d messages, want %d", len(files), len(messages))
	}
	// fetchmail exits 1 for "no new mail".
	if code := fetch(); code != 1 {
		t.Fatalf("second fetchmail run: exit %d, want 1 (no mail)", code)
	}
	if files, _ := os.ReadDir(out); len(files) != len(messages) {
		t.Fatalf("second run fetched again: %d files", len(files))
	}
	if uids, _ := f.st.UIDs(context.Background(), f.inbox.ID); len(uids) != len(messages) {
		t.Fatalf("keep mode deleted messages: %v", uids)
	}
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// TestSTLSAndImplicitTLS: STLS upgrades the session, after which USER is
// offered; without TLS from a non-loopback peer the password is refused
// (checked through InsecureAuthAllowed); implicit TLS works too.
func TestSTLSAndImplicitTLS(t *testing.T) {
	f := start(t)
	serverTLS, clientTLS := legacytest.SelfSignedTLS(t)
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &pop3.Server{Backend: storeLogin{&Backend{Store: f.st}}, TLSConfig: serverTLS,
				InsecureAuthAllowed: func(net.Addr) bool { return false }}
			serveLn := ln
			if mode == "implicit" {
				serveLn = tls.NewListener(ln, serverTLS)
			}
			go srv.Serve(serveLn)
			defer srv.Shutdown(context.Background())
			if mode == "starttls" {
				plain, err := pop3.Dial(context.Background(), ln.Addr().String(), pop3.DialOptions{Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				caps, _ := plain.Capa()
				if caps["STLS"] == nil || caps["USER"] != nil {
					t.Fatalf("CAPA before TLS from an untrusted network: %v", caps)
				}
				var perr *pop3.Error
				if err := plain.AuthPlain(user, password); !errors.As(err, &perr) || perr.Code != "AUTH" {
					t.Fatalf("password before TLS: %v", err)
				}
				plain.Close()
			}
			c, err := pop3.Dial(context.Background(), ln.Addr().String(), pop3.DialOptions{TLS: mode, TLSConfig: clientTLS, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if caps, _ := c.Capa(); caps["USER"] == nil || caps["STLS"] != nil {
				t.Fatalf("CAPA over TLS: %v", caps)
			}
			if err := c.Login(user, password); err != nil {
				t.Fatal(err)
			}
			if n, _, err := c.Stat(); err != nil || n != len(messages) {
				t.Fatalf("STAT over TLS: %d %v", n, err)
			}
			c.Quit()
		})
	}
}

// storeLogin logs in with the stored password alone: what the login
// policy (front.Router) does for a captured account, for these tests of
// the maildrop.
type storeLogin struct{ b *Backend }

func (l storeLogin) Login(ctx context.Context, user, password string, _ net.Addr) (pop3.Maildrop, error) {
	acct, err := l.b.Store.Account(ctx, user)
	if err != nil {
		return nil, pop3.ErrAuthFailed
	}
	if ok, err := l.b.Store.VerifyPassword(ctx, user, password); err != nil || !ok || acct.State != store.StateCaptured {
		return nil, pop3.ErrAuthFailed
	}
	return l.b.Open(ctx, acct)
}
