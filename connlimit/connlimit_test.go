package connlimit

import (
	"bufio"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"mailcapture/labels"
)

// serve accepts on a limited loopback listener and hands each accepted
// connection to the returned channel.
func serve(t *testing.T, l *Limiter) (addr string, accepted chan net.Conn) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := Listen(raw, l, "* BYE too many connections\r\n")
	t.Cleanup(func() { ln.Close() })
	accepted = make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			c.Write([]byte("* OK hello\r\n"))
			accepted <- c
		}
	}()
	return raw.Addr().String(), accepted
}

func dialLine(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	return c, line
}

func TestPerAddressLimit(t *testing.T) {
	var refusals atomic.Int64
	l := &Limiter{PerAddress: 3, Refused: func(limit labels.Limit) {
		if limit == labels.ConnectionsPerAddress {
			refusals.Add(1)
		}
	}}
	addr, accepted := serve(t, l)
	var server []net.Conn
	for range 3 {
		if _, line := dialLine(t, addr); line != "* OK hello\r\n" {
			t.Fatalf("greeting %q", line)
		}
		server = append(server, <-accepted)
	}
	c, line := dialLine(t, addr)
	if line != "* BYE too many connections\r\n" {
		t.Fatalf("4th connection got %q, want the refusal", line)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("refused connection not closed: %v", err)
	}
	if refusals.Load() != 1 || l.Open() != 3 {
		t.Fatalf("refusals %d, open %d", refusals.Load(), l.Open())
	}
	// Closing one (twice: release is idempotent) frees exactly one slot.
	server[0].Close()
	server[0].Close()
	if _, line := dialLine(t, addr); line != "* OK hello\r\n" {
		t.Fatalf("after a close got %q", line)
	}
	<-accepted
	if _, line := dialLine(t, addr); line != "* BYE too many connections\r\n" {
		t.Fatalf("over the limit again got %q", line)
	}
}

func TestTotalLimit(t *testing.T) {
	l := &Limiter{Total: 2, PerAddress: 10}
	addr, accepted := serve(t, l)
	for range 2 {
		dialLine(t, addr)
		<-accepted
	}
	if _, line := dialLine(t, addr); line != "* BYE too many connections\r\n" {
		t.Fatalf("3rd connection got %q", line)
	}
}

func TestAcquireAddresses(t *testing.T) {
	l := &Limiter{PerAddress: 1}
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	b := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 2000}
	c := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 1000}
	release, ok := l.Acquire(a)
	if !ok {
		t.Fatal("first refused")
	}
	if _, ok := l.Acquire(b); ok {
		t.Fatal("second connection from the same IP (other port) allowed")
	}
	if _, ok := l.Acquire(c); !ok {
		t.Fatal("another IP refused")
	}
	release()
	if _, ok := l.Acquire(b); !ok {
		t.Fatal("slot not released")
	}
}

// TestCloseWritePassesThrough: an accepted connection can shut its
// writing side (the lingering close of a session that says BYE): the
// client reads the greeting, then EOF, while the server can still read
// what the client sends.
func TestCloseWritePassesThrough(t *testing.T) {
	addr, accepted := serve(t, &Limiter{})
	c, greeting := dialLine(t, addr)
	if greeting != "* OK hello\r\n" {
		t.Fatalf("greeting %q", greeting)
	}
	s := <-accepted
	defer s.Close()
	cw, ok := s.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("an accepted connection has no CloseWrite")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Fatalf("client read after CloseWrite: %d bytes, %v; want EOF", n, err)
	}
	c.Write([]byte("a NOOP\r\n"))
	line, err := bufio.NewReader(s).ReadString('\n')
	if err != nil || line != "a NOOP\r\n" {
		t.Fatalf("server read %q, %v after its CloseWrite", line, err)
	}
}
