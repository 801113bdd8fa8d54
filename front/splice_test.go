package front

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"mailcapture/legacyclient"
)

// TestLingeringCloseEndsDespiteIdleClock: once a proxied session starts
// closing, the client reader's idle clock (here an hour) no longer moves
// the read deadline, so the lingering close ends within lingerTime even
// when the reader re-arms it after the close began and the client neither
// sends nor closes (it had left a shutdown waiting for the session).
func TestLingeringCloseEndsDespiteIdleClock(t *testing.T) {
	p, client, _ := splicedPair(t) // the client never closes before the end

	closed := make(chan struct{})
	go func() {
		p.close()
		close(closed)
	}()
	// Wait for the close to begin, then re-arm the idle clock as the
	// client reader does before each read.
	waitUntil(t, "the close began", func() bool {
		p.deadlineMu.Lock()
		defer p.deadlineMu.Unlock()
		return p.closing
	})
	p.armIdle()
	select {
	case <-closed:
	case <-time.After(10 * lingerTime):
		t.Fatalf("the lingering close still waits after %v (lingerTime %v)", 10*lingerTime, lingerTime)
	}
	// The client got the end of the stream, not a reset.
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("client read after the close: %d bytes, %v", n, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestEndWaitsForTheCommandInFlight: a cut-over's end of a proxied
// session waits for the command in flight, even after earlier commands
// passed boundaries while no end waited (those must not count).
func TestEndWaitsForTheCommandInFlight(t *testing.T) {
	p, client, legacyPeer := splicedPair(t)
	client.SetDeadline(time.Now().Add(20 * time.Second))
	legacyPeer.SetDeadline(time.Now().Add(20 * time.Second))
	ran := make(chan sessionEnd, 1)
	go func() { ran <- p.run() }()

	clientR, legacyR := bufio.NewReader(client), bufio.NewReader(legacyPeer)
	exchange := func(sent, answer, want string) {
		t.Helper()
		if _, err := client.Write([]byte(sent)); err != nil {
			t.Fatal(err)
		}
		if line, err := legacyR.ReadString('\n'); err != nil || line != sent {
			t.Fatalf("legacy got %q, %v; want %q", line, err, sent)
		}
		if _, err := legacyPeer.Write([]byte(answer)); err != nil {
			t.Fatal(err)
		}
		if line, err := clientR.ReadString('\n'); err != nil || line != want {
			t.Fatalf("client got %q, %v; want %q", line, err, want)
		}
	}
	exchange("n NOOP\r\n", "n OK done\r\n", "n OK done\r\n")   // a boundary with no end waiting
	exchange("b SELECT {5}\r\n", "+ go on\r\n", "+ go on\r\n") // half a command

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ended := make(chan struct{})
	go func() {
		p.end(ctx, "moved")
		close(ended)
	}()
	waitUntil(t, "the end began", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.stopping
	})
	select {
	case <-ended:
		t.Fatal("the session was ended in the middle of a command")
	default:
	}
	exchange("INBOX\r\n", "b OK selected\r\n", "b OK selected\r\n")
	if line, err := clientR.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* BYE [UNAVAILABLE] moved") {
		t.Fatalf("after the command: %q, %v; want * BYE", line, err)
	}
	<-ended
	if e := <-ran; e.by != "server" {
		t.Fatalf("session ended by %q (%v), want server", e.by, e.err)
	}
}

// splicedPair makes a proxied session over a loopback TCP connection
// (client is the client's end) and a pipe to the legacy side (legacyPeer
// plays the legacy server); the idle clock is an hour. All is closed when
// the test ends.
func splicedPair(t *testing.T) (p *proxiedIMAP, client net.Conn, legacyPeer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	legacySide, legacyPeer := net.Pipe()
	t.Cleanup(func() { legacyPeer.Close(); legacySide.Close(); server.Close() })
	legacy := &legacyclient.IMAPSession{Conn: &legacyclient.Conn{Conn: legacySide}, R: bufio.NewReader(legacySide)}
	return newProxiedIMAP("a@example.org", server, bufio.NewReader(server), legacy, time.Hour, time.Minute), client, legacyPeer
}

// waitUntil polls cond, a state the code under test reaches on its own,
// for at most 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not reached within 10 s: %s", what)
		}
	}
}
