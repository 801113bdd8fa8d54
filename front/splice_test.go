package front

import (
	"bufio"
	"net"
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
