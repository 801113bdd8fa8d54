package pop3

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailcapture/labels"
)

// fuzzBackend is one maildrop ("u"/"p") of three awkward messages.
type fuzzBackend struct{}

var fuzzMessages = []string{
	"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n",
	"Subject: long\r\n\r\n" + strings.Repeat("y", 5000) + "\r\n",
	"bare\nLF\n",
}

func (fuzzBackend) Login(_ context.Context, user, password string, _ net.Addr) (Maildrop, error) {
	if user != "u" || password != "p" {
		return nil, ErrAuthFailed
	}
	return &fuzzDrop{}, nil
}

type fuzzDrop struct{}

func (*fuzzDrop) Messages() []MessageInfo {
	var out []MessageInfo
	for i, m := range fuzzMessages {
		out = append(out, MessageInfo{Size: int64(len(m)), UIDL: "uid-" + string(rune('a'+i))})
	}
	return out
}
func (*fuzzDrop) Open(_ context.Context, i int) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(fuzzMessages[i])), nil
}
func (*fuzzDrop) Commit(context.Context, []int) error { return nil }
func (*fuzzDrop) Close()                              {}

// panicCatcher fails the fuzz run when a session logs a recovered panic.
type panicCatcher struct{ panics *atomic.Int64 }

func (h panicCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (h panicCatcher) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		h.panics.Add(1)
	}
	return nil
}
func (h panicCatcher) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h panicCatcher) WithGroup(string) slog.Handler      { return h }

// FuzzServerSession: any bytes from a client end in replies and a closed
// session, never a panic or a hang.
func FuzzServerSession(f *testing.F) {
	for _, seed := range []string{
		"USER u\r\nPASS p\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 2 0\r\nDELE 3\r\nRSET\r\nQUIT\r\n",
		"CAPA\r\nAUTH PLAIN AHUAcA==\r\nRETR 99\r\nLIST -1\r\nQUIT\r\n",
		"AUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nPASS x\r\nSTLS\r\n",
		"user u\npass p\nretr 2\ndele 1\ndele 1\nquit\n",
		strings.Repeat("X", 600) + "\r\nNOOP\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var panics atomic.Int64
		srv := &Server{Backend: fuzzBackend{}, InsecureAuthAllowed: func(net.Addr) bool { return true },
			Timeout: 2 * time.Second, Log: slog.New(panicCatcher{&panics})}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			newSession(srv, server).serve()
			close(done)
		}()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(raw)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not end")
		}
		if panics.Load() > 0 {
			t.Fatal("the session panicked")
		}
	})
}

// FuzzClient: any bytes from a server give the client errors or data, never
// a panic or a hang, and never more message bytes than the server sent.
func FuzzClient(f *testing.F) {
	for _, seed := range []string{
		"+OK ready\r\n+OK\r\nTOP\r\nUIDL\r\n.\r\n+OK 2 30\r\n+OK\r\n1 10\r\n2 20\r\n.\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n+OK\r\nline\r\n..dot\r\n.\r\n",
		"+OK\r\n-ERR [SYS/TEMP] later\r\n",
		"+OK\r\n+OK\r\n" + strings.Repeat("z", 70000) + "\r\n.\r\n",
		"garbage\n\n.\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		client, server := net.Pipe()
		go io.Copy(io.Discard, server)
		go func() {
			server.SetWriteDeadline(time.Now().Add(2 * time.Second))
			server.Write(raw)
			server.Close()
		}()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c := newClient(client, time.Second)
			defer c.Close()
			if _, err := c.readLine(); err != nil {
				return
			}
			c.Capa()
			c.Stat()
			c.List()
			c.UIDL()
			if r, err := c.Retr(1); err == nil {
				got, _ := io.ReadAll(r)
				if len(got) > len(raw) {
					t.Errorf("RETR gave %d bytes from a %d-byte stream", len(got), len(raw))
				}
			}
			if r, err := c.Top(1, 0); err == nil {
				io.Copy(io.Discard, r)
			}
			c.Quit()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the client hung")
		}
	})
}

// TestSlowAndOversizedClients: a command trickled in past the timeout ends
// the session with -ERR, an overlong line gets -ERR and the session goes
// on; both are reported to Limited.
func TestSlowAndOversizedClients(t *testing.T) {
	var mu sync.Mutex
	limited := map[labels.Limit]int{}
	srv := &Server{Backend: fuzzBackend{}, Timeout: 300 * time.Millisecond,
		Limited: func(l labels.Limit) { mu.Lock(); limited[l]++; mu.Unlock() }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n')
	fmt.Fprintf(c, "%s\r\nCAPA\r\n", strings.Repeat("A", 2000))
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "-ERR line too long") {
		t.Fatalf("overlong line: %q", line)
	}
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "+OK") {
		t.Fatalf("after the overlong line: %q", line)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("CAPA listing: %v", err)
		}
		if line == ".\r\n" {
			break
		}
	}
	go func() {
		for _, b := range []byte("USER u\r\n") {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "-ERR [SYS/TEMP] autologout") {
		t.Fatalf("slow command: %q", line)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("the session stayed open")
	}
	mu.Lock()
	defer mu.Unlock()
	if limited["line_length"] != 1 || limited["timeout"] != 1 {
		t.Fatalf("limits reported: %v", limited)
	}
}

// bigBackend is one maildrop ("u"/"p") of one 32 MiB message.
type bigBackend struct{}

const bigMessageSize = 32 << 20

func (bigBackend) Login(_ context.Context, user, password string, _ net.Addr) (Maildrop, error) {
	if user != "u" || password != "p" {
		return nil, ErrAuthFailed
	}
	return bigDrop{}, nil
}

type bigDrop struct{}

func (bigDrop) Messages() []MessageInfo { return []MessageInfo{{Size: bigMessageSize, UIDL: "big"}} }
func (bigDrop) Open(context.Context, int) (io.ReadCloser, error) {
	line := strings.Repeat("z", 78) + "\r\n"
	return io.NopCloser(strings.NewReader("Subject: big\r\n\r\n" + strings.Repeat(line, bigMessageSize/len(line)))), nil
}
func (bigDrop) Commit(context.Context, []int) error { return nil }
func (bigDrop) Close()                              {}

// TestClientThatStopsReadingIsDropped: a client that asks for a large
// message and never reads it holds the session no longer than the write
// timeout (its writes no longer block for ever).
func TestClientThatStopsReadingIsDropped(t *testing.T) {
	ended := make(chan struct{}, 1)
	srv := &Server{Backend: bigBackend{}, WriteTimeout: 200 * time.Millisecond, Timeout: time.Hour,
		SessionEnded: func() { ended <- struct{}{} }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, "USER u\r\nPASS p\r\nRETR 1\r\n") // and never a read
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the session of a client that stopped reading was still open after 30s (write timeout 200ms)")
	}
}

// TestNonPOP3PeersAreCut: a peer that does not speak POP3 (an HTTP
// request, a cross-protocol attack) is cut at its first line, and
// counted; a POP3 command of the later state only gets -ERR. AUTH LOGIN,
// with and without an initial response, logs in.
func TestNonPOP3PeersAreCut(t *testing.T) {
	var mu sync.Mutex
	limited := map[labels.Limit]int{}
	srv := &Server{Backend: fuzzBackend{}, Limited: func(l labels.Limit) { mu.Lock(); limited[l]++; mu.Unlock() }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	dialAndSay := func(lines ...string) []string {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		r.ReadString('\n')
		var out []string
		for _, l := range lines {
			io.WriteString(c, l+"\r\n")
			got, err := r.ReadString('\n')
			if err != nil {
				out = append(out, "EOF")
				return out
			}
			out = append(out, strings.TrimSpace(got))
		}
		if rest, err := io.ReadAll(r); err == nil && len(rest) == 0 {
			out = append(out, "EOF")
		}
		return out
	}
	if got := dialAndSay("GET / HTTP/1.1"); len(got) != 2 || !strings.HasPrefix(got[0], "-ERR") || got[1] != "EOF" {
		t.Fatalf("HTTP request: %q", got)
	}
	got := dialAndSay("STAT", "AUTH LOGIN", "dQ==", "cA==", "STAT", "QUIT")
	if got[0] != "-ERR not logged in" || got[1] != "+ VXNlcm5hbWU6" || got[2] != "+ UGFzc3dvcmQ6" || !strings.HasPrefix(got[3], "+OK") || !strings.HasPrefix(got[4], "+OK 3") {
		t.Fatalf("AUTH LOGIN: %q", got)
	}
	if got := dialAndSay("AUTH LOGIN dQ==", "cA=="); got[0] != "+ UGFzc3dvcmQ6" || !strings.HasPrefix(got[1], "+OK") {
		t.Fatalf("AUTH LOGIN with an initial response: %q", got)
	}
	if got := dialAndSay("AUTH CRAM-MD5"); !strings.HasPrefix(got[0], "-ERR unsupported mechanism") {
		t.Fatalf("AUTH CRAM-MD5: %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if limited[labels.UnknownCommand] != 1 {
		t.Fatalf("unknown commands counted: %v", limited)
	}
}
