package imapstore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/capture"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

type fixture struct {
	d    *legacytest.Dovecot
	st   *store.Store
	addr string
}

// captured starts a legacy Dovecot with a varied mailbox, captures it,
// marks the account captured and serves the store over IMAP.
func captured(t *testing.T, opts legacytest.Options) *fixture {
	t.Helper()
	ctx := context.Background()
	d := legacytest.Start(t, opts)
	d.AddUser(t, user, password)
	msgs := legacytest.Generate(9, 60, 40000)
	d.Populate(t, user, password, []legacytest.Folder{
		{Name: "INBOX", Subscribed: true, Messages: msgs[:30], Expunge: []int{2, 3}},
		{Name: "Sent", Subscribed: true, Messages: msgs[30:40]},
		{Name: "Drafts", Messages: msgs[40:42]},
		{Name: "Trash", Subscribed: true},
		{Name: "Work/Projects/2024", Subscribed: true, Messages: msgs[42:60]},
	})
	st := storetest.Open(t, "")
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := &capture.Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second}}
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	storetest.MarkCaptured(t, st, user)
	return &fixture{d: d, st: st, addr: serveStore(t, st)}
}

// serveStore serves the store's account over IMAP, each connection
// authenticated from the start (PREAUTH), as the front end hands them.
func serveStore(t *testing.T, st *store.Store) string {
	t.Helper()
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &errorLog{}
	srv := NewServer(st, Options{Log: slog.New(logs)})
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				fmt.Fprintf(c, "* PREAUTH [CAPABILITY %s] ready\r\n", Capabilities())
				acct, _ := st.Account(ctx, user)
				srv.Serve(ctx, c, nil, acct, slog.New(logs))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		wg.Wait()
		for _, e := range logs.errors {
			t.Errorf("server logged an error: %s", e)
		}
	})
	return ln.Addr().String()
}

func (f *fixture) login(t *testing.T) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(f.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientsSeeTheLegacyMailbox reads the legacy Dovecot and the local
// server with the same IMAP client code and compares everything a client
// can see: folder names and attributes, subscriptions, UIDVALIDITY,
// UIDNEXT, UIDs, flags, INTERNALDATE, RFC822.SIZE and bytes.
func TestClientsSeeTheLegacyMailbox(t *testing.T) {
	for _, opts := range []legacytest.Options{{Separator: ".", Prefix: "INBOX."}, {Separator: "/"}} {
		t.Run(fmt.Sprintf("separator %q", opts.Separator), func(t *testing.T) {
			f := captured(t, opts)
			legacy := f.d.Snapshot(t, user, password)
			local := legacytest.SnapshotIMAP(t, f.login(t))
			if len(local) != len(legacy) {
				t.Errorf("%d folders locally, %d on the legacy server", len(local), len(legacy))
			}
			for name, lf := range legacy {
				f := local[name]
				if f == nil {
					t.Errorf("folder %q missing", name)
					continue
				}
				if strings.Join(f.Attrs, " ") != strings.Join(lf.Attrs, " ") || f.Subscribed != lf.Subscribed ||
					f.UIDValidity != lf.UIDValidity || f.UIDNext < lf.UIDNext || len(f.Messages) != len(lf.Messages) {
					t.Errorf("folder %q: local attrs %v sub %v uidvalidity %d uidnext %d n %d; legacy %v %v %d %d %d", name,
						f.Attrs, f.Subscribed, f.UIDValidity, f.UIDNext, len(f.Messages), lf.Attrs, lf.Subscribed, lf.UIDValidity, lf.UIDNext, len(lf.Messages))
					continue
				}
				for i, lm := range lf.Messages {
					m := f.Messages[i]
					if m.UID != lm.UID || strings.Join(m.Flags, " ") != strings.Join(lm.Flags, " ") || !m.InternalDate.Equal(lm.InternalDate) ||
						m.Size != lm.Size || !bytes.Equal(m.Body, lm.Body) {
						t.Errorf("folder %q message %d differs: UID %d/%d flags %v/%v size %d/%d", name, i, m.UID, lm.UID, m.Flags, lm.Flags, m.Size, lm.Size)
					}
				}
			}
			c := f.login(t)
			ns, err := c.Namespace().Wait()
			if err != nil || len(ns.Personal) != 1 || ns.Personal[0].Prefix != opts.Prefix || string(ns.Personal[0].Delim) != opts.Separator {
				t.Fatalf("NAMESPACE %+v %v", ns, err)
			}
		})
	}
}

// TestSectionsFlagsSearchAndMoves exercises the commands mail clients
// use on the local server.
func TestSectionsFlagsSearchAndMoves(t *testing.T) {
	f := captured(t, legacytest.Options{})
	c := f.login(t)
	ctx := context.Background()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	acct, _ := f.st.Account(ctx, user)
	inbox, _ := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	msgs, _ := f.st.Messages(ctx, inbox.ID, store.AllUIDs)
	first := msgs[0]
	raw, _ := f.st.ReadBody(first.ID)
	header := raw[:bytes.Index(raw, []byte("\r\n\r\n"))+4]

	var seq1 imap.SeqSet
	seq1.AddNum(1)
	headerSec := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	fieldsSec := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}, Peek: true}
	partialSec := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 5, Size: 10}}
	bufs, err := c.Fetch(seq1, &imap.FetchOptions{UID: true, Envelope: true, BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
		BodySection: []*imap.FetchItemBodySection{headerSec, fieldsSec, partialSec}}).Collect()
	if err != nil || len(bufs) != 1 {
		t.Fatalf("fetch: %v", err)
	}
	b := bufs[0]
	if !bytes.Equal(b.FindBodySection(headerSec), header) {
		t.Errorf("BODY[HEADER] %q", b.FindBodySection(headerSec))
	}
	if got := string(b.FindBodySection(fieldsSec)); !strings.HasPrefix(got, "Subject: message 0 of 60\r\n") || !strings.HasSuffix(got, "\r\n\r\n") {
		t.Errorf("BODY[HEADER.FIELDS (Subject)] %q", got)
	}
	if got := b.FindBodySection(partialSec); !bytes.Equal(got, raw[5:15]) {
		t.Errorf("BODY[]<5.10> %q", got)
	}
	if b.Envelope == nil || b.Envelope.Subject != "message 0 of 60" || b.BodyStructure == nil {
		t.Errorf("envelope %+v structure %v", b.Envelope, b.BodyStructure)
	}

	// STORE, SEARCH, EXPUNGE, COPY, MOVE, APPEND.
	if err := c.Store(seq1, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted, "Important"}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	found, err := c.UIDSearch(&imap.SearchCriteria{Flag: []imap.Flag{"important"}}, nil).Wait()
	if err != nil || fmt.Sprint(found.AllUIDs()) != fmt.Sprint([]imap.UID{imap.UID(first.UID)}) {
		t.Fatalf("UID SEARCH KEYWORD: %v %v", found, err)
	}
	expunged, err := c.Expunge().Collect()
	if err != nil || len(expunged) != 1 || expunged[0] != 1 {
		t.Fatalf("EXPUNGE answered %v %v", expunged, err)
	}
	var seq12 imap.SeqSet
	seq12.AddRange(1, 2)
	cp, err := c.Copy(seq12, "Trash").Wait()
	if err != nil || len(cp.DestUIDs) != 1 {
		t.Fatalf("COPY: %+v %v", cp, err)
	}
	mv, err := c.Move(seq12, "Work/Projects/2024").Wait()
	if err != nil || mv.UIDValidity == 0 {
		t.Fatalf("MOVE: %+v %v", mv, err)
	}
	newMsg := []byte("Subject: new\r\n\r\nhi\r\n")
	ap := c.Append("INBOX", int64(len(newMsg)), nil)
	ap.Write(newMsg)
	ap.Close()
	apData, err := ap.Wait()
	if err != nil || apData.UID == 0 {
		t.Fatalf("APPEND: %+v %v", apData, err)
	}
	// LIST-STATUS: STATUS data with each selectable mailbox.
	listed, err := c.List("", "*", &imap.ListOptions{ReturnStatus: &imap.StatusOptions{NumMessages: true}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	withStatus := 0
	for _, l := range listed {
		if l.Status != nil && l.Status.NumMessages != nil {
			withStatus++
			if l.Mailbox == "INBOX" && *l.Status.NumMessages != 26 {
				t.Fatalf("LIST-STATUS INBOX: %d messages", *l.Status.NumMessages)
			}
		}
	}
	if withStatus != 5 {
		t.Fatalf("LIST-STATUS gave STATUS for %d mailboxes, want the 5 selectable ones", withStatus)
	}
	status, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, UIDNext: true}).Wait()
	if err != nil || *status.NumMessages != 26 || uint32(status.UIDNext) != uint32(apData.UID)+1 {
		t.Fatalf("STATUS %+v %v", status, err)
	}
}

// TestIdleSeesDelivery: a message delivered to the store shows up in an
// IDLE session as EXISTS.
func TestIdleSeesDelivery(t *testing.T) {
	f := captured(t, legacytest.Options{})
	exists := make(chan uint32, 8)
	c, err := imapclient.DialInsecure(f.addr, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(data *imapclient.UnilateralDataMailbox) {
			if data.NumMessages != nil {
				exists <- *data.NumMessages
			}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	acct, _ := f.st.Account(ctx, user)
	inbox, _ := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	start := time.Now()
	if _, err := f.st.Append(ctx, inbox.ID, strings.NewReader("Subject: pushed\r\n\r\nnew mail\r\n"), nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n != sel.NumMessages+1 {
			t.Fatalf("EXISTS %d, want %d", n, sel.NumMessages+1)
		}
		t.Logf("IDLE saw the delivery after %v", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("IDLE did not report the delivery within a second")
	}
	idle.Close()
	idle.Wait()
}

// TestPythonImaplib runs one imaplib script against the legacy Dovecot
// and against the local server and requires the same results: mailbox
// names and attributes (as sets), and per message UID, flags (as a set;
// \Recent, obsolete in IMAP4rev2, left out), INTERNALDATE (as an instant),
// RFC822.SIZE and the SHA-256 of the bytes. The wire forms may differ
// where IMAP allows it (quoting, " 7-Mar" or "07-Mar", flag order).
func TestPythonImaplib(t *testing.T) {
	f := captured(t, legacytest.Options{Separator: ".", Prefix: "INBOX."})
	run := func(addr string) string {
		host, port, _ := net.SplitHostPort(addr)
		script := fmt.Sprintf(`
import imaplib, hashlib, re
c = imaplib.IMAP4(%q, %s)
if c.state == "NONAUTH":
    c.login(%q, %q)
typ, boxes = c.list()
rows = []
for b in boxes:
    m = re.match(rb'\((.*?)\) "(.)" "?([^"]*)"?$', b)
    rows.append((m.group(3).decode(), sorted(m.group(1).decode().split()), m.group(2).decode()))
for r in sorted(rows):
    print(r)
for box in ("INBOX", "INBOX.Sent", "INBOX.Work.Projects.2024"):
    typ, data = c.select(box, readonly=True)
    print(box, typ, data[0].decode(), c.response("UIDVALIDITY")[1])
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = re.search(r"UID (\d+)", meta).group(1)
        flags = sorted(f for f in re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split() if f != "\\Recent")
        when = imaplib.Internaldate2tuple(item[0])
        size = re.search(r"RFC822.SIZE (\d+)", meta).group(1)
        print(uid, flags, tuple(when)[:6], size, hashlib.sha256(item[1]).hexdigest())
c.logout()
`, host, port, user, password)
		out, err := exec.Command("python3", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("imaplib against %s: %v\n%s", addr, err, out)
		}
		return string(out)
	}
	legacy, local := run(f.d.IMAPAddr), run(f.addr)
	if legacy != local {
		t.Fatalf("imaplib sees different mailboxes.\nlegacy:\n%s\nlocal:\n%s", legacy, local)
	}
	if !strings.Contains(local, "('INBOX.Sent', ['\\\\HasNoChildren', '\\\\Sent'], '.')") {
		t.Fatalf("imaplib output lacks INBOX.Sent with \\Sent:\n%s", local)
	}
}

// TestFetchCacheFollowsChanges: once a FETCH has loaded the mailbox's
// metadata cache, changes made by another session (flags, a new message,
// an expunge) show in FETCH exactly as the database has them.
func TestFetchCacheFollowsChanges(t *testing.T) {
	f := captured(t, legacytest.Options{})
	ctx := context.Background()
	a, b := f.login(t), f.login(t)
	if _, err := a.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	fetchAll := func() map[uint32]string {
		t.Helper()
		var all imap.UIDSet
		all.AddRange(1, 0) // 1:*
		msgs, err := a.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		out := map[uint32]string{}
		for _, m := range msgs {
			var flags []string
			for _, fl := range m.Flags {
				flags = append(flags, string(fl))
			}
			sort.Strings(flags)
			out[uint32(m.UID)] = fmt.Sprintf("%v %d", flags, m.RFC822Size)
		}
		return out
	}
	fetchAll() // loads the cache
	if _, err := b.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged, "$Cached"}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	app := b.Append("INBOX", int64(len("Subject: new\r\n\r\nnew\r\n")), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	app.Write([]byte("Subject: new\r\n\r\nnew\r\n"))
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	got := fetchAll()
	acct, _ := f.st.Account(ctx, user)
	inbox, _ := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	rows, _ := f.st.Messages(ctx, inbox.ID, store.AllUIDs)
	want := map[uint32]string{}
	for _, m := range rows {
		flags := append([]string(nil), m.Flags...)
		sort.Strings(flags)
		want[m.UID] = fmt.Sprintf("%v %d", flags, m.Size)
	}
	if len(got) != len(want) {
		t.Fatalf("FETCH shows %d messages, the database has %d", len(got), len(want))
	}
	for uid, w := range want {
		if got[uid] != w {
			t.Errorf("UID %d: FETCH %q, database %q", uid, got[uid], w)
		}
	}
}

// TestIdleMailboxStatesBounded: states of mailboxes nobody has selected
// are kept for reuse, at most keepIdle of them, the least recently used
// dropped first; a deleted mailbox's state is never kept.
func TestIdleMailboxStatesBounded(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, "")
	acct, _ := st.CreateAccount(ctx, "idle@example.org", "pw", store.StateCaptured)
	srv := NewServer(st, Options{})
	var ids []int64
	for i := 0; i < keepIdle+5; i++ {
		mb, err := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: fmt.Sprintf("box%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, mb.ID)
		m, err := srv.open(ctx, mb.ID)
		if err != nil {
			t.Fatal(err)
		}
		srv.release(m)
	}
	if len(srv.mailboxes) != keepIdle || srv.idle != keepIdle {
		t.Fatalf("%d states kept (%d idle), want %d", len(srv.mailboxes), srv.idle, keepIdle)
	}
	for _, id := range ids[:5] {
		if srv.mailboxes[id] != nil {
			t.Fatalf("the least recently used state of mailbox %d was kept", id)
		}
	}
	// Selected again, then deleted: not kept.
	m, _ := srv.open(ctx, ids[10])
	if srv.idle != keepIdle-1 {
		t.Fatalf("idle %d after selecting a kept state", srv.idle)
	}
	if err := st.DeleteMailbox(ctx, ids[10]); err != nil {
		t.Fatal(err)
	}
	srv.release(m)
	if srv.mailboxes[ids[10]] != nil || srv.idle != keepIdle-1 {
		t.Fatalf("a deleted mailbox's state was kept (idle %d)", srv.idle)
	}
}
