package imapstore

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/store"
)

const (
	user     = "ann@example.org"
	password = "imap secret"
)

// local is a local server over a fresh store with one captured account.
type local struct {
	st   *store.Store
	srv  *Server
	addr string
	acct store.Account
	logs *errorLog
	stop func() // ends every session and closes the store
}

// errorLog records what the server logs at ERROR: a test fails on any
// unless it expects them.
type errorLog struct {
	mu     sync.Mutex
	errors []string
}

func (l *errorLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		l.mu.Lock()
		l.errors = append(l.errors, b.String())
		l.mu.Unlock()
	}
	return nil
}

// take returns the errors logged so far and forgets them.
func (l *errorLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.errors
	l.errors = nil
	return out
}

func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }

// newLocal starts a local server whose account uses the separator sep.
func newLocal(t testing.TB, sep string) *local {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir(), store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	acct, err := st.CreateAccount(ctx, user, password, store.StateCaptured)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetLegacyNamespace(ctx, user, "", sep, false); err != nil {
		t.Fatal(err)
	}
	acct, _ = st.Account(ctx, user)
	if _, err := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", Subscribed: true}); err != nil {
		t.Fatal(err)
	}
	return serveLocal(t, st, acct)
}

// serveLocal starts a local server over st whose sessions are logged in
// as acct; it stops (and closes st) when t ends, or when the returned
// local's stop is called.
func serveLocal(t testing.TB, st *store.Store, acct store.Account) *local {
	t.Helper()
	ctx := context.Background()
	logs := &errorLog{}
	srv := NewServer(st, Options{Log: slog.New(logs)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &local{st: st, srv: srv, addr: ln.Addr().String(), acct: acct, logs: logs}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				fmt.Fprintf(c, "* PREAUTH [CAPABILITY %s] ready\r\n", Capabilities())
				a, _ := st.Account(ctx, acct.Name)
				srv.Serve(ctx, c, nil, a, slog.New(logs))
			}()
		}
	}()
	var once sync.Once
	l.stop = func() {
		once.Do(func() {
			ln.Close()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			wg.Wait()
			st.Close()
			logs.mu.Lock()
			defer logs.mu.Unlock()
			for _, e := range logs.errors {
				t.Errorf("server logged an error: %s", e)
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

// imapServer is a server a transcript can run against.
type imapServer interface {
	dial(t testing.TB) *tclient
	name() string
}

func (l *local) name() string { return "mailcapture" }

func (l *local) dial(t testing.TB) *tclient {
	t.Helper()
	c := connect(t, l.addr)
	if g := c.readLine(); !strings.HasPrefix(g, "* PREAUTH") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

// oracle is a private Dovecot with the same account.
type oracle struct{ d *legacytest.Dovecot }

func newOracle(t testing.TB, sep string) *oracle {
	d := legacytest.Start(t, legacytest.Options{Separator: sep})
	d.AddUser(t, user, password)
	return &oracle{d: d}
}

func (o *oracle) name() string { return "dovecot" }

func (o *oracle) dial(t testing.TB) *tclient {
	t.Helper()
	c := connect(t, o.d.IMAPAddr)
	c.readLine()
	c.expect("OK", "LOGIN %q %q", user, password)
	return c
}

// bothServers runs a transcript against Dovecot and the local server:
// an expectation that fails against Dovecot is wrong about IMAP.
func bothServers(t *testing.T, sep string, fn func(t *testing.T, srv imapServer)) {
	t.Run("dovecot", func(t *testing.T) { fn(t, newOracle(t, sep)) })
	t.Run("mailcapture", func(t *testing.T) { fn(t, newLocal(t, sep)) })
}

// tclient speaks IMAP one line at a time, mox style: each command's
// untagged responses are kept for the checks that follow.
type tclient struct {
	t     testing.TB
	conn  net.Conn
	br    *bufio.Reader
	n     int
	lines []string // untagged responses of the last command, literals inline
	tag   string   // the last command's tagged line
}

func connect(t testing.TB, addr string) *tclient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &tclient{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// readLine reads one response line; a literal is read into the line.
func (c *tclient) readLine() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b strings.Builder
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read: %v (after %q)", err, b.String()+line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		b.WriteString(line)
		n, ok := trailingLiteral(line)
		if !ok {
			return b.String()
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(c.br, buf); err != nil {
			c.t.Fatalf("read literal: %v", err)
		}
		b.WriteString("\r\n")
		b.Write(buf)
	}
}

var literalRE = regexp.MustCompile(`~?\{(\d+)\}$`)

func trailingLiteral(line string) (int, bool) {
	m := literalRE.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	n, _ := strconv.Atoi(m[1])
	return n, true
}

// write sends raw bytes.
func (c *tclient) write(raw string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(raw)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// do sends a command and reads to its tagged answer, which it returns
// as "OK", "NO" or "BAD".
func (c *tclient) do(format string, args ...any) string {
	c.t.Helper()
	c.n++
	tag := fmt.Sprintf("t%d", c.n)
	c.write(tag + " " + fmt.Sprintf(format, args...) + "\r\n")
	return c.await(tag)
}

// await reads responses until the one tagged tag.
func (c *tclient) await(tag string) string {
	c.t.Helper()
	c.lines = nil
	for {
		line := c.readLine()
		if strings.HasPrefix(line, tag+" ") {
			c.tag = line
			status, _, _ := strings.Cut(strings.TrimPrefix(line, tag+" "), " ")
			return status
		}
		if strings.HasPrefix(line, "+") {
			c.t.Fatalf("unexpected continuation %q", line)
		}
		c.lines = append(c.lines, line)
	}
}

// expect runs a command and fails unless it ends with status.
func (c *tclient) expect(status, format string, args ...any) []string {
	c.t.Helper()
	if got := c.do(format, args...); got != status {
		c.t.Fatalf("%s: got %q, want %s; untagged %q", fmt.Sprintf(format, args...), c.tag, status, c.lines)
	}
	return c.lines
}

// has fails unless an untagged response of the last command equals want
// (case-insensitive).
func (c *tclient) has(want string) {
	c.t.Helper()
	for _, l := range c.lines {
		if strings.EqualFold(l, want) {
			return
		}
	}
	c.t.Fatalf("no untagged %q after %q; got %q", want, c.tag, c.lines)
}

// hasNot fails if an untagged response matches the regular expression.
func (c *tclient) hasNot(re string) {
	c.t.Helper()
	rx := regexp.MustCompile("(?i)" + re)
	for _, l := range c.lines {
		if rx.MatchString(l) {
			c.t.Fatalf("unexpected untagged %q after %q", l, c.tag)
		}
	}
}

// find returns the untagged responses that match the regular expression.
func (c *tclient) find(re string) []string {
	rx := regexp.MustCompile("(?i)" + re)
	var out []string
	for _, l := range c.lines {
		if rx.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// appendMessage APPENDs msg with a synchronising literal.
func (c *tclient) appendMessage(mailbox, flags, msg string) string {
	c.t.Helper()
	c.n++
	tag := fmt.Sprintf("t%d", c.n)
	if flags != "" {
		flags = " (" + flags + ")"
	}
	c.write(fmt.Sprintf("%s APPEND %s%s {%d}\r\n", tag, mailbox, flags, len(msg)))
	if line := c.readLine(); !strings.HasPrefix(line, "+") {
		c.lines = nil
		c.tag = line
		return strings.Fields(line)[1]
	}
	c.write(msg + "\r\n")
	return c.await(tag)
}
