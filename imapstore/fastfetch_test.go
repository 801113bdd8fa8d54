package imapstore

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/store"
)

// TestFastFetchMatchesImapserver sends the same commands to a server that
// answers metadata-only FETCH itself and to one that leaves every line to
// imapserver, over the same store, and compares the bytes they answer:
// flags and keywords, dates in other zones and single-digit days, an
// expunge and a delivery pending for the session, a FETCH with bodies.
func TestFastFetchMatchesImapserver(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir(), store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acct, err := st.CreateAccount(ctx, user, password, store.StateCaptured)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX"})
	if err != nil {
		t.Fatal(err)
	}
	flagSets := [][]string{nil, {`\Seen`}, {`\Seen`, `\Answered`, "$Label1"}, {`\Flagged`, "Junk", "$Forwarded"}, {`\Deleted`}, {`\Draft`, `\Seen`}}
	zones := []*time.Location{time.UTC, time.FixedZone("", -7*3600-30*60), time.FixedZone("", 14*3600)}
	var uids []uint32
	for i := range 40 {
		body := fmt.Sprintf("From: a@example.org\r\nSubject: %d\r\n\r\n%s\r\n", i, strings.Repeat("x", i*37))
		date := time.Date(2024, time.Month(1+i%12), 1+i%28, i%24, i, i, 0, zones[i%len(zones)])
		ins, err := st.Append(ctx, mb.ID, strings.NewReader(body), flagSets[i%len(flagSets)], date)
		if err != nil {
			t.Fatal(err)
		}
		uids = append(uids, ins.UID)
	}

	b := NewBackend(st, nil)
	serve := func(fast bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := imapserver.New(&imapserver.Options{
			NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
				if fast {
					return b.NewSession(nil, c.NetConn()), nil, nil
				}
				return b.NewSession(nil, nil), nil, nil
			},
			Caps:         Caps,
			InsecureAuth: true,
		})
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	slowAddr, fastAddr := serve(false), serve(true)
	slow, fast := dialLines(t, slowAddr), dialLines(t, fastAddr)
	commands := []string{
		`LOGIN "` + user + `" "` + password + `"`,
		"SELECT INBOX",
		"FETCH 1:* (FLAGS)",
		"UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)",
		"FETCH 3,7:9,38:* FAST",
		"FETCH 1:* (UID)",
		"FETCH 5 (RFC822.SIZE UID FLAGS BODY.PEEK[HEADER])",
		"FETCH 2:4 (UID BODY[])", // sets \Seen: not the fast path
		"UID FETCH 1:* (FLAGS)",
	}
	for i, cmd := range commands {
		if cmd == "FETCH 1:* (UID)" {
			// A delivery and an expunge (by another session) that each
			// session learns of before its next FETCH.
			if _, err := st.Append(ctx, mb.ID, strings.NewReader("Subject: late\r\n\r\nlate\r\n"), []string{"$Late"}, time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := st.StoreFlags(ctx, mb.ID, []store.UIDRange{{Start: uids[10], Stop: uids[11]}}, store.FlagsAdd, []string{`\Deleted`}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Expunge(ctx, mb.ID, []uint32{uids[10], uids[11]}); err != nil {
				t.Fatal(err)
			}
		}
		tag := fmt.Sprintf("t%d", i)
		want, got := slow.run(tag, cmd), fast.run(tag, cmd)
		if last := want[strings.LastIndex(strings.TrimSuffix(want, "\r\n"), "\n")+1:]; !strings.HasPrefix(last, tag+" OK") {
			t.Fatalf("%s: imapserver answered %q", cmd, want)
		}
		if got != want {
			t.Errorf("%s: the fast path answered\n%s\nimapserver answered\n%s", cmd, got, want)
		}
	}
	if n := strings.Count(slow.run("z", "FETCH 1:* (FLAGS)"), " FETCH ("); n != 39 {
		t.Errorf("%d messages after the delivery and the expunge, want 39", n)
	}
}

// lineConn is a raw IMAP client that returns everything up to a tagged
// answer as one string.
type lineConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialLines(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &lineConn{t: t, c: c, r: bufio.NewReader(c)}
	if greeting, err := l.r.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting %q %v", greeting, err)
	}
	return l
}

func (l *lineConn) run(tag, cmd string) string {
	l.t.Helper()
	l.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(l.c, "%s %s\r\n", tag, cmd); err != nil {
		l.t.Fatal(err)
	}
	var out strings.Builder
	for {
		line, err := l.r.ReadString('\n')
		if err != nil {
			l.t.Fatalf("%s: %v after %q", cmd, err, out.String())
		}
		out.WriteString(line)
		if strings.HasPrefix(line, tag+" ") {
			return out.String()
		}
	}
}

// TestAtomFlags: what the fast path writes as is, and what it leaves to
// imapserver.
func TestAtomFlags(t *testing.T) {
	for _, c := range []struct {
		flags []string
		atoms bool
	}{
		{nil, true},
		{[]string{`\Seen`, "$Label1", "Junk", "a.b-c_d"}, true},
		{[]string{""}, false},
		{[]string{`a\b`}, false},
		{[]string{"two words"}, false},
		{[]string{"par(en"}, false},
		{[]string{"Été"}, false},
		{[]string{"tab\there"}, false},
	} {
		if got := atomFlags(c.flags); got != c.atoms {
			t.Errorf("atomFlags(%q) = %v, want %v", c.flags, got, c.atoms)
		}
	}
}
