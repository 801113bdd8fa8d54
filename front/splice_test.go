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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close() // the client never closes before the end
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	legacySide, legacyPeer := net.Pipe()
	defer legacyPeer.Close()
	legacy := &legacyclient.IMAPSession{Conn: &legacyclient.Conn{Conn: legacySide}}
	p := newProxiedIMAP("a@example.org", server, bufio.NewReader(server), legacy, time.Hour, time.Minute)

	closed := make(chan struct{})
	go func() {
		p.close()
		close(closed)
	}()
	// Wait for the close to begin, then re-arm the idle clock as the
	// client reader does before each read.
	for deadline := time.Now().Add(10 * time.Second); ; {
		p.deadlineMu.Lock()
		closing := p.closing
		p.deadlineMu.Unlock()
		if closing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the close did not begin")
		}
		time.Sleep(time.Millisecond)
	}
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(20 * time.Second))
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	legacySide, legacyPeer := net.Pipe()
	defer legacyPeer.Close()
	legacyPeer.SetDeadline(time.Now().Add(20 * time.Second))
	legacy := &legacyclient.IMAPSession{Conn: &legacyclient.Conn{Conn: legacySide}, R: bufio.NewReader(legacySide)}
	p := newProxiedIMAP("a@example.org", server, bufio.NewReader(server), legacy, time.Hour, time.Minute)
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
	for deadline := time.Now().Add(10 * time.Second); ; {
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		if stopping {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the end did not begin")
		}
		time.Sleep(time.Millisecond)
	}
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
