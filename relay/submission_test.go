package relay

import (
	"bufio"
	"context"
	"encoding/base64"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/front"
)

// smtpConn is a raw SMTP client connection for exact answers.
type smtpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialSMTP(t *testing.T, addr string) *smtpConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	s := &smtpConn{t: t, c: c, r: bufio.NewReader(c)}
	s.answer()
	return s
}

// answer reads one (possibly multi-line) reply.
func (s *smtpConn) answer() string {
	s.t.Helper()
	var all string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("after %q: %v", all, err)
		}
		all += line
		if len(line) < 4 || line[3] != '-' {
			return all
		}
	}
}

func (s *smtpConn) cmd(line string) string {
	s.t.Helper()
	io.WriteString(s.c, line+"\r\n")
	return s.answer()
}

// startSubmission runs a submission front end beside the fixture's MX
// backend; every client is trusted (no TLS needed).
func startSubmission(t *testing.T) (*fixture, *Backend, string) {
	t.Helper()
	var mx *Backend
	f := start(t, func(b *Backend) { mx = b })
	sub := &SubmissionBackend{MX: mx, Router: &front.Router{Store: f.st}, Outbound: true, Trusted: func(net.Addr) bool { return true }}
	srv := smtp.NewServer(sub)
	srv.Domain = "mx.example.org"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f, mx, ln.Addr().String()
}

// TestDrainEndsSubmissionSessions: a stop ends an idle submission session
// with 421 at once; one in a transaction finishes its message first.
func TestDrainEndsSubmissionSessions(t *testing.T) {
	_, mx, addr := startSubmission(t)
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00local@example.org\x00pw"))
	idle, busy := dialSMTP(t, addr), dialSMTP(t, addr)
	for _, c := range []*smtpConn{idle, busy} {
		c.cmd("EHLO client.example.net")
		if got := c.cmd(auth); !strings.HasPrefix(got, "235") {
			t.Fatalf("AUTH: %q", got)
		}
	}
	if got := busy.cmd("MAIL FROM:<local@example.org>"); !strings.HasPrefix(got, "250") {
		t.Fatalf("MAIL: %q", got)
	}
	drained := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		mx.Drain(ctx)
		close(drained)
	}()
	if got := idle.answer(); !strings.HasPrefix(got, "421") {
		t.Fatalf("an idle session during a stop: %q, want 421", got)
	}
	for _, line := range []string{"RCPT TO:<out@example.net>", "DATA"} {
		if got := busy.cmd(line); !strings.HasPrefix(got, "250") && !strings.HasPrefix(got, "354") {
			t.Fatalf("%s during a stop: %q", line, got)
		}
	}
	if got := busy.cmd("From: local@example.org\r\nSubject: last\r\n\r\nhello\r\n."); !strings.HasPrefix(got, "250") {
		t.Fatalf("the message in progress during a stop: %q, want 250", got)
	}
	if got := busy.answer(); !strings.HasPrefix(got, "421") {
		t.Fatalf("after its message, during a stop: %q, want 421", got)
	}
	select {
	case <-drained:
	case <-time.After(20 * time.Second):
		t.Fatal("Drain did not return once both sessions ended")
	}
}
