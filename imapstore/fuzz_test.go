package imapstore

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// FuzzSession feeds any bytes to an authenticated session: no command may
// panic (a panic is logged at ERROR, which fails the target), and the
// session always ends once its input does.
func FuzzSession(f *testing.F) {
	for _, seed := range []string{
		"a SELECT INBOX\r\nb FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)] BODYSTRUCTURE)\r\n",
		"a CREATE x\r\nb APPEND x (\\Seen $k) {11+}\r\nSubject: x\r\n\r\nc SELECT x\r\nd STORE 1 +FLAGS ($j)\r\ne SEARCH OR KEYWORD $j NOT 1:* RETURN (ALL)\r\n",
		"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (* %) RETURN (STATUS (MESSAGES RECENT SIZE) CHILDREN)\r\n",
		"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE APPENDLIMIT)\r\n",
		"a SELECT INBOX\r\nb UID FETCH *:1 (BINARY.PEEK[1] BINARY.SIZE[1] BODY[1.2.MIME]<0.5>)\r\nc MOVE 1 INBOX\r\nd IDLE\r\nDONE\r\n",
		"a SEARCH ((((((((((ALL))))))))))\r\nb SEARCH HEADER {3}\r\nabc x\r\n",
		"a APPEND INBOX {99999999999}\r\n",
		"a ID (\"x\" NIL)\r\nb ENABLE UTF8=ACCEPT\r\nc NAMESPACE\r\nd RENAME INBOX y\r\n",
	} {
		f.Add([]byte(seed))
	}
	l := newLocal(f, "/")
	f.Fuzz(func(t *testing.T, raw []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.srv.Serve(context.Background(), server, bufio.NewReader(server), l.acct, slog.New(l.logs))
		}()
		go func() {
			client.Write(raw)
			client.Close()
		}()
		go io.Copy(io.Discard, client)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("the session did not end with its input")
		}
		if errs := l.logs.take(); len(errs) > 0 {
			t.Fatalf("logged: %q", errs)
		}
	})
}
