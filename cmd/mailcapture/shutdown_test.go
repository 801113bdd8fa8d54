package main

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailcapture/legacytest"
)

// TestSIGTERMFinishesInFlightSMTP: SIGTERM stops serve gracefully: an
// idle SMTP session gets 421 at once, a transaction in the middle of its
// DATA still gets its 250 (and the message is stored), then serve exits 0.
func TestSIGTERMFinishesInFlightSMTP(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	path, dataDir, environ := bulkConfig(t, d)
	seedCapturedAccount(t, dataDir, "local@example.org")
	environ = append(environ, "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none", childEnv+"=1")
	child, addrs := startChild(t, path, environ)
	smtpAddr := addrs["listen.smtp"]

	type conn struct {
		c net.Conn
		r *bufio.Reader
	}
	dial := func() *conn {
		c, err := net.Dial("tcp", smtpAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &conn{c, bufio.NewReader(c)}
	}
	expect := func(c *conn, code string) {
		t.Helper()
		c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			line, err := c.r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %s: %v", code, err)
			}
			if len(line) >= 4 && line[3] == '-' {
				continue
			}
			if !strings.HasPrefix(line, code) {
				t.Fatalf("got %q, want %s", line, code)
			}
			return
		}
	}
	send := func(c *conn, line, code string) {
		t.Helper()
		fmt.Fprintf(c.c, "%s\r\n", line)
		expect(c, code)
	}
	busy, idle := dial(), dial()
	expect(busy, "220")
	expect(idle, "220")
	send(idle, "EHLO idle.example.net", "250")
	send(busy, "EHLO busy.example.net", "250")
	send(busy, "MAIL FROM:<a@example.net>", "250")
	send(busy, "RCPT TO:<local@example.org>", "250")
	send(busy, "DATA", "354")
	fmt.Fprintf(busy.c, "Message-ID: <in-flight@example.net>\r\nSubject: in flight\r\n\r\nfirst half\r\n")

	if err := child.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect(idle, "421")
	fmt.Fprintf(busy.c, "second half\r\n.\r\n")
	expect(busy, "250")
	expect(busy, "421")
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not exit within its shutdown time")
	}
	ids := storedMessageIDs(t, dataDir, "local@example.org")
	if len(ids) != 1 || ids[0] != "<in-flight@example.net>" {
		t.Fatalf("stored after the graceful stop: %v", ids)
	}
}
