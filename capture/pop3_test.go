package capture

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/store"
)

type popMessage struct {
	uidl string
	body []byte
}

// legacyMaildrop reads the legacy maildrop over POP3, as a POP3 client
// that leaves mail on the server sees it.
func legacyMaildrop(t *testing.T, addr string) []popMessage {
	t.Helper()
	c, err := pop3.Dial(context.Background(), addr, pop3.DialOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	uidls, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	var out []popMessage
	for _, u := range uidls {
		r, err := c.Retr(u.Num)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, popMessage{uidl: u.UIDL, body: body})
	}
	c.Quit()
	return out
}

// localMaildrop reads the account's maildrop from the store, as the local
// POP3 server will serve it.
func localMaildrop(t *testing.T, st *store.Store) []popMessage {
	t.Helper()
	ctx := context.Background()
	acct, _ := st.Account(ctx, user)
	_, drop, err := st.Maildrop(ctx, acct.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out []popMessage
	for _, m := range drop {
		body, err := st.ReadBody(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, popMessage{uidl: m.UIDL, body: body})
	}
	return out
}

func assertSameMaildrop(t *testing.T, legacy, local []popMessage) {
	t.Helper()
	if len(legacy) != len(local) {
		t.Fatalf("%d messages locally, %d on the legacy POP3 server", len(local), len(legacy))
	}
	for i := range legacy {
		if legacy[i].uidl != local[i].uidl || !bytes.Equal(legacy[i].body, local[i].body) {
			t.Fatalf("message %d: local UIDL %s (%d bytes), legacy %s (%d bytes)", i+1, local[i].uidl, len(local[i].body), legacy[i].uidl, len(legacy[i].body))
		}
	}
}

// TestPOP3OnlyCapture: a legacy server reached over POP3 only. INBOX is
// built from RETR with the legacy UIDLs, and kept converged.
func TestPOP3OnlyCapture(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{UIDLFormat: "%g"})
	d.AddUser(t, user, password)
	msgs := legacytest.Generate(11, 30, 100000)
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: msgs}})
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := &Engine{Store: st, POP3: legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: 10 * time.Second}, BatchMessages: 7, VerifySample: 5}
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	if conv.Passes[0].Added != 30 || !conv.Verification.OK() {
		t.Fatalf("capture: %+v", conv)
	}
	assertSameMaildrop(t, legacyMaildrop(t, d.POP3Addr), localMaildrop(t, st))

	// A POP3 client deletes two messages at the legacy server; new mail
	// arrives. The next passes follow.
	c, err := pop3.Dial(ctx, d.POP3Addr, pop3.DialOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(7); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(12, 3, 5000)}})
	conv, err = e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	if p := conv.Passes[0]; p.Added != 3 || p.Expunged != 2 {
		t.Fatalf("delta: %+v", p)
	}
	assertSameMaildrop(t, legacyMaildrop(t, d.POP3Addr), localMaildrop(t, st))
	if res, err := e.Pass(ctx, user, password); err != nil || res.Changed() {
		t.Fatalf("idle pass: %+v %v", res, err)
	}
}

// TestIMAPCaptureKeepsPOP3UIDLs: the legacy server has both; INBOX comes
// over IMAP and the POP3 UIDLs (in a format unlike mailcapture's default)
// are mapped onto it, so a POP3 client leaving mail on the server sees the
// same maildrop before and after.
func TestIMAPCaptureKeepsPOP3UIDLs(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{UIDLFormat: "%g"})
	populate(t, d)
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := newEngine(st, d)
	e.POP3 = legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: 10 * time.Second}
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	// IMAP first: reading the maildrop with RETR makes Dovecot set \Seen.
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
	legacy := legacyMaildrop(t, d.POP3Addr)
	if legacy[0].uidl == localMaildropDefaultUIDL(t, st) {
		t.Fatal("the legacy UIDL format equals mailcapture's default: this test would prove nothing")
	}
	assertSameMaildrop(t, legacy, localMaildrop(t, st))
}

func localMaildropDefaultUIDL(t *testing.T, st *store.Store) string {
	ctx := context.Background()
	acct, _ := st.Account(ctx, user)
	inbox, _ := st.MailboxByName(ctx, acct.ID, "INBOX")
	msgs, _ := st.Messages(ctx, inbox.ID, store.AllUIDs)
	m := msgs[0]
	m.POP3UIDL = ""
	return store.UIDL(m, inbox.UIDValidity)
}

// TestPOP3UIDLsMatchedByMessageID: when the maildrop no longer lines up
// with the IMAP copy (the legacy INBOX lost a message and got a new one
// after the copy: same count, positions shifted), each UIDL is matched by
// the Message-ID read with TOP, not by position, and the new message's
// UIDL is not given to any copied one.
func TestPOP3UIDLsMatchedByMessageID(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{UIDLFormat: "%g"})
	populate(t, d)
	st := openStore(t)
	acct, err := st.CreateAccount(ctx, user, password, store.StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(st, d)
	if _, err := e.Converge(ctx, user, password, 5); err != nil { // IMAP only: no UIDLs yet
		t.Fatal(err)
	}
	c := d.Login(t, user, password)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	fresh := "Message-ID: <fresh@example.org>\r\nSubject: arrived after the copy\r\n\r\nhello\r\n"
	ap := c.Append("INBOX", int64(len(fresh)), nil)
	ap.Write([]byte(fresh))
	ap.Close()
	if _, err := ap.Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()

	e.POP3 = legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: 10 * time.Second}
	if err := e.mapUIDLs(ctx, acct, password); err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	local, err := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]store.Message{}
	for _, m := range local {
		if m.MessageID != "" {
			byID[m.MessageID] = m
		}
	}
	legacy := legacyMaildrop(t, d.POP3Addr)
	if len(legacy) != len(local) {
		t.Fatalf("maildrop %d messages, copy %d: the test needs them equal", len(legacy), len(local))
	}
	shifted, matched := 0, 0
	for i, m := range legacy {
		id := messageIDOf(m.body)
		l, ok := byID[id]
		switch {
		case id == "<fresh@example.org>":
			for _, lm := range local {
				if lm.POP3UIDL == m.uidl {
					t.Fatalf("the new message's UIDL %s was given to copied UID %d", m.uidl, lm.UID)
				}
			}
		case id == "" || !ok:
			continue
		case l.POP3UIDL != m.uidl:
			t.Errorf("maildrop message %d (%s): UIDL %q kept as %q", i+1, id, m.uidl, l.POP3UIDL)
		default:
			matched++
			if i >= 2 {
				shifted++
			}
		}
	}
	if shifted < 10 {
		t.Fatalf("only %d shifted messages matched by Message-ID (%d in all)", shifted, matched)
	}
	t.Logf("%d UIDLs kept, %d of them after the shift (matched by TOP and Message-ID)", matched, shifted)
}

// messageIDOf returns the Message-ID field of a message's header.
func messageIDOf(body []byte) string {
	head, _, _ := bytes.Cut(body, []byte("\r\n\r\n"))
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		if name, value, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(name, []byte("Message-ID")) {
			return string(bytes.TrimSpace(value))
		}
	}
	return ""
}

// TestMaildropWithATwiceGivenUIDLIsRefused: a POP3 server that gives one
// UIDL to two messages cannot have its messages told apart; the maildrop
// read says so and names the UIDL. (A scripted server: Dovecot never does
// this.)
func TestMaildropWithATwiceGivenUIDLIsRefused(t *testing.T) {
	for _, tc := range []struct {
		uidls   string
		wantErr string
	}{
		{"1 aaa\r\n2 bbb\r\n3 ccc\r\n", ""},
		{"1 aaa\r\n2 bbb\r\n3 aaa\r\n", `UIDL "aaa" twice`},
	} {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			r := bufio.NewReader(server)
			fmt.Fprint(server, "+OK ready\r\n")
			answers := map[string]string{
				"CAPA": "+OK\r\nUIDL\r\n.\r\n",
				"LIST": "+OK\r\n1 10\r\n2 20\r\n3 30\r\n.\r\n",
				"UIDL": "+OK\r\n" + tc.uidls + ".\r\n",
			}
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				answer, ok := answers[strings.TrimSpace(line)]
				if !ok {
					answer = "-ERR unknown\r\n"
				}
				fmt.Fprint(server, answer)
			}
		}()
		c, err := pop3.NewClient(client, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		md, err := readMaildrop(c)
		c.Close()
		switch {
		case tc.wantErr == "" && (err != nil || !slices.Equal(md.uidls, []string{"aaa", "bbb", "ccc"}) || !slices.Equal(md.sizes, []int64{10, 20, 30})):
			t.Errorf("maildrop %v, %v", md, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("maildrop with UIDLs %q: error %v, want one saying %s", tc.uidls, err, tc.wantErr)
		}
	}
}
