package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

// testHash keeps argon2id cheap in tests; production defaults are tested
// in TestDefaultHashParams.
var testHash = HashParams{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}

func openTest(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir, Options{Hash: testHash})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testMessage(i int) []byte {
	return []byte(fmt.Sprintf("From: sender%d@example.org\r\nTo: user@example.org\r\nSubject: message %d\r\nMessage-ID: <%d@example.org>\r\n\r\nbody of message %d\r\n", i, i, i, i))
}

func newAccountWithInbox(t *testing.T, s *Store, name string) (Account, Mailbox) {
	t.Helper()
	ctx := context.Background()
	acct, err := s.CreateAccount(ctx, name, "secret", StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "INBOX", UIDValidity: 1234, UIDNext: 1})
	if err != nil {
		t.Fatal(err)
	}
	return acct, inbox
}

func TestAccountsAndStates(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	a, err := s.CreateAccount(ctx, "ann@example.org", "correct horse", StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAccount(ctx, "ANN@example.org", "x", StateCapturing); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate account (case-insensitive): %v", err)
	}
	if ok, err := s.VerifyPassword(ctx, "ann@example.org", "correct horse"); err != nil || !ok {
		t.Fatalf("right password: %v %v", ok, err)
	}
	if ok, _ := s.VerifyPassword(ctx, "ann@example.org", "wrong"); ok {
		t.Fatal("wrong password accepted")
	}
	// An account captured by a master user has no hash: nothing verifies,
	// not even the empty password.
	if _, err := s.CreateAccount(ctx, "bulk@example.org", "", StateCapturing); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.VerifyPassword(ctx, "bulk@example.org", ""); ok {
		t.Fatal("the empty password verified an account without a hash")
	}
	if _, err := s.VerifyPassword(ctx, "nobody@example.org", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown account: %v", err)
	}
	var hash string
	if err := s.read.QueryRow("SELECT password_hash FROM accounts WHERE id = ?", a.ID).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "$argon2id$v=19$m=8192,t=1,p=1$") || strings.Contains(hash, "correct horse") {
		t.Fatalf("stored hash %q", hash)
	}

	if err := s.Transition(ctx, a.Name, StateCaptured, StateCutover); !errors.Is(err, ErrStateChanged) {
		t.Fatalf("transition from the wrong state: %v", err)
	}
	// Two racing transitions from the same state: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Transition(ctx, a.Name, StateCapturing, StateCutover); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, ErrStateChanged) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d racing transitions won, want 1", wins)
	}
	if err := s.Transition(ctx, a.Name, StateCutover, StateCaptured); err != nil {
		t.Fatal(err)
	}
	got, err := s.Account(ctx, "Ann@Example.org")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateCaptured || got.CapturedAt.IsZero() {
		t.Fatalf("account after cut-over: %+v", got)
	}
	if err := s.SetLegacyNamespace(ctx, a.Name, "INBOX.", ".", true); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordSync(ctx, a.Name, time.Now(), "legacy: connection refused"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Account(ctx, a.Name)
	if got.LegacyPrefix != "INBOX." || got.LegacySeparator != "." || !got.SpecialUseGuessed || got.LastError == "" {
		t.Fatalf("namespace/error not recorded: %+v", got)
	}
	counts, err := s.StateCounts(ctx)
	if err != nil || counts[StateCaptured] != 1 || counts[StateCapturing] != 1 {
		t.Fatalf("state counts %v %v", counts, err)
	}
}

func TestCaptureBatchKeepsUIDsAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	_, inbox := newAccountWithInbox(t, s, "bob@example.org")
	date := time.Date(2020, 3, 4, 5, 6, 7, 0, time.FixedZone("", -7*3600))

	add := func(uids ...uint32) []Inserted {
		b := s.NewBatch()
		for _, u := range uids {
			err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: u, LegacyUID: u, InternalDate: date,
				Flags: []string{`\seen`, "$Label1", `\Recent`}, POP3UIDL: fmt.Sprintf("uidl-%d", u)}, bytes.NewReader(testMessage(int(u))))
			if err != nil {
				t.Fatal(err)
			}
		}
		res, err := b.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := add(3, 7, 42)
	for i, r := range res {
		if r.Duplicate || r.UID != []uint32{3, 7, 42}[i] {
			t.Fatalf("insert %d: %+v", i, r)
		}
	}
	// Re-running the same batch (a resumed capture) stores nothing twice.
	res = add(7, 42, 43)
	if !res[0].Duplicate || !res[1].Duplicate || res[2].Duplicate || res[2].UID != 43 {
		t.Fatalf("re-insert: %+v", res)
	}
	msgs, err := s.Messages(ctx, inbox.ID, AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 {
		t.Fatalf("%d messages stored, want 4", len(msgs))
	}
	m := msgs[1]
	if m.UID != 7 || m.LegacyUID != 7 || m.POP3UIDL != "uidl-7" || !m.InternalDate.Equal(date) {
		t.Fatalf("message metadata %+v", m)
	}
	if _, off := m.InternalDate.Zone(); off != -7*3600 {
		t.Fatalf("internal date zone offset %d, want -25200", off)
	}
	if strings.Join(m.Flags, " ") != `$Label1 \Seen` {
		t.Fatalf("flags %q", m.Flags)
	}
	raw, err := s.ReadBody(m.ID)
	if err != nil || !bytes.Equal(raw, testMessage(7)) || m.Size != int64(len(raw)) {
		t.Fatalf("body mismatch: %q %v", raw, err)
	}
	st, _ := s.Status(ctx, inbox.ID, 0)
	if st.UIDNext != 44 || st.Messages != 4 || st.Unseen != 0 {
		t.Fatalf("status %+v", st)
	}
	// Invariant 4: UIDNEXT never goes down; appends get fresh UIDs.
	if err := s.UpdateMailbox(ctx, inbox.ID, nil, true, 100); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateMailbox(ctx, inbox.ID, nil, true, 50); err != nil {
		t.Fatal(err)
	}
	ins, err := s.Append(ctx, inbox.ID, bytes.NewReader(testMessage(100)), nil, time.Time{})
	if err != nil || ins.UID != 100 {
		t.Fatalf("append after raising UIDNEXT: %+v %v", ins, err)
	}
	// An explicit UID that is taken is refused, and nothing of the batch
	// is stored.
	b := s.NewBatch()
	b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: 200}, bytes.NewReader(testMessage(200)))
	b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: 3}, bytes.NewReader(testMessage(3)))
	if _, err := b.Commit(ctx); !errors.Is(err, ErrExists) {
		t.Fatalf("reused UID: %v", err)
	}
	if got, _ := s.UIDs(ctx, inbox.ID); fmt.Sprint(got) != "[3 7 42 43 100]" {
		t.Fatalf("UIDs after failed batch: %v", got)
	}
	assertNoStrayFiles(t, s)
}

func TestStructureCached(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	_, inbox := newAccountWithInbox(t, s, "c@example.org")
	raw := "From: a@example.org\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\none\r\n--x\r\nContent-Type: text/html\r\n\r\n<b>two</b>\r\n--x--\r\n"
	ins, err := s.Append(ctx, inbox.ID, strings.NewReader(raw), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := s.Messages(ctx, inbox.ID, []UIDRange{{ins.UID, ins.UID}})
	st, err := s.Structure(ctx, msgs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Envelope.Subject != "hi" || len(st.Root.Parts) != 2 || raw[st.Root.Parts[1].BodyStart:st.Root.Parts[1].End] != "<b>two</b>" {
		t.Fatalf("cached structure %+v", st)
	}
}

func TestFlagsExpungeCopyMoveAndWatch(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	acct, inbox := newAccountWithInbox(t, s, "d@example.org")
	archive, err := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "Archive", SpecialUse: []string{`\Archive`}})
	if err != nil {
		t.Fatal(err)
	}
	w := s.Watch(inbox.ID)
	defer w.Close()
	for i := 1; i <= 5; i++ {
		if _, err := s.Append(ctx, inbox.ID, bytes.NewReader(testMessage(i)), nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	<-w.Ready()
	added := 0
	for _, c := range w.Drain() {
		if c.Kind == MessagesAdded {
			added += len(c.UIDs)
		}
	}
	if added != 5 {
		t.Fatalf("watcher saw %d additions, want 5", added)
	}

	up, err := s.StoreFlags(ctx, inbox.ID, []UIDRange{{2, 3}}, FlagsAdd, []string{`\Deleted`, "Work"})
	if err != nil || len(up) != 2 {
		t.Fatalf("store flags: %v %v", up, err)
	}
	if up, _ := s.StoreFlags(ctx, inbox.ID, []UIDRange{{2, 2}}, FlagsAdd, []string{`\DELETED`}); len(up) != 0 {
		t.Fatalf("adding a flag already set reported a change: %v", up)
	}
	deleted, err := s.Search(ctx, inbox.ID, Criteria{WithFlags: []string{`\deleted`}})
	if err != nil || fmt.Sprint(deleted) != "[2 3]" {
		t.Fatalf("search \\Deleted: %v %v", deleted, err)
	}
	gone, err := s.Expunge(ctx, inbox.ID, deleted)
	if err != nil || fmt.Sprint(gone) != "[2 3]" {
		t.Fatalf("expunge: %v %v", gone, err)
	}
	cp, err := s.Copy(ctx, inbox.ID, []uint32{1, 4}, archive.ID)
	if err != nil || fmt.Sprint(cp.SourceUIDs, cp.DestUIDs) != "[1 4] [1 2]" || cp.DestUIDValidity != archive.UIDValidity {
		t.Fatalf("copy: %+v %v", cp, err)
	}
	mv, err := s.Move(ctx, inbox.ID, []uint32{5}, archive.ID)
	if err != nil || fmt.Sprint(mv.DestUIDs) != "[3]" {
		t.Fatalf("move: %+v %v", mv, err)
	}
	if uids, _ := s.UIDs(ctx, inbox.ID); fmt.Sprint(uids) != "[1 4]" {
		t.Fatalf("inbox after move: %v", uids)
	}
	arch, _ := s.Messages(ctx, archive.ID, AllUIDs)
	for i, want := range []int{1, 4, 5} {
		raw, err := s.ReadBody(arch[i].ID)
		if err != nil || !bytes.Equal(raw, testMessage(want)) {
			t.Fatalf("archive message %d: %q %v", i, raw, err)
		}
	}
	kinds := map[ChangeKind]int{}
	for _, c := range w.Drain() {
		kinds[c.Kind] += max(len(c.UIDs), len(c.Flags))
	}
	if kinds[FlagsChanged] != 2 || kinds[MessagesExpunged] != 3 {
		t.Fatalf("watcher saw %v", kinds)
	}

	// Search keys.
	if got, _ := s.Search(ctx, archive.ID, Criteria{Header: []HeaderMatch{{"Subject", "MESSAGE 4"}}}); fmt.Sprint(got) != "[2]" {
		t.Fatalf("header search: %v", got)
	}
	if got, _ := s.Search(ctx, archive.ID, Criteria{Body: []string{"body of message 5"}}); fmt.Sprint(got) != "[3]" {
		t.Fatalf("body search: %v", got)
	}
	if got, _ := s.Search(ctx, archive.ID, Criteria{Not: []Criteria{{Text: []string{"sender1@"}}}}); fmt.Sprint(got) != "[2 3]" {
		t.Fatalf("not-text search: %v", got)
	}
	or := Criteria{Or: [][2]Criteria{{{UIDs: []UIDRange{{1, 1}}}, {Larger: 1 << 20}}}}
	if got, _ := s.Search(ctx, archive.ID, or); fmt.Sprint(got) != "[1]" {
		t.Fatalf("or search: %v", got)
	}
	if got, _ := s.Search(ctx, archive.ID, Criteria{Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("since search: %v", got)
	}

	// Rename with children, then delete.
	if _, err := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "Archive/2020"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RenameMailbox(ctx, acct.ID, "Archive", "Old", "/"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MailboxByName(ctx, acct.ID, "Old/2020"); err != nil {
		t.Fatalf("child not renamed: %v", err)
	}
	old, _ := s.MailboxByName(ctx, acct.ID, "Old")
	if old.UIDValidity != archive.UIDValidity {
		t.Fatal("rename changed UIDVALIDITY")
	}
	if err := s.DeleteMailbox(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	// Copies were hard links: deleting them keeps the originals readable.
	for _, m := range mustMessages(t, s, inbox.ID) {
		if raw, err := s.ReadBody(m.ID); err != nil || len(raw) == 0 {
			t.Fatalf("original of a deleted copy: %v", err)
		}
	}
	assertNoStrayFiles(t, s)
}

func mustMessages(t *testing.T, s *Store, mailboxID int64) []Message {
	t.Helper()
	msgs, err := s.Messages(context.Background(), mailboxID, AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestMaildrop(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	acct, inbox := newAccountWithInbox(t, s, "e@example.org")
	b := s.NewBatch()
	b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: 1, LegacyUID: 1, POP3UIDL: "legacy-a"}, bytes.NewReader(testMessage(1)))
	b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: 2, LegacyUID: 2}, bytes.NewReader(testMessage(2)))
	if _, err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_, drop, err := s.Maildrop(ctx, acct.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(drop) != 2 || drop[0].UIDL != "legacy-a" || drop[1].UIDL != "00000002000004d2" {
		t.Fatalf("maildrop %+v", drop)
	}
	if drop[0].Size != int64(len(testMessage(1))) {
		t.Fatalf("size %d", drop[0].Size)
	}
	// DELE 1 then QUIT.
	if _, err := s.Expunge(ctx, inbox.ID, []uint32{drop[0].UID}); err != nil {
		t.Fatal(err)
	}
	_, drop, _ = s.Maildrop(ctx, acct.ID)
	if len(drop) != 1 || drop[0].UIDL != "00000002000004d2" {
		t.Fatalf("maildrop after QUIT %+v", drop)
	}
}

func TestSpoolAndHeldDelivery(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	acct, inbox := newAccountWithInbox(t, s, "f@example.org")
	env := Envelope{From: "a@example.net", To: []string{"f@example.org", "g@example.org"}}
	e, err := s.Enqueue(ctx, RouteLegacy, 0, env, bytes.NewReader(testMessage(1)))
	if err != nil {
		t.Fatal(err)
	}
	due, err := s.DueSpool(ctx, time.Now(), 10)
	if err != nil || len(due) != 1 || due[0].ID != e.ID || strings.Join(due[0].To, ",") != "f@example.org,g@example.org" {
		t.Fatalf("due: %+v %v", due, err)
	}
	if err := s.Defer(ctx, e.ID, []string{"g@example.org"}, time.Now().Add(time.Hour), "451 try later"); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.DueSpool(ctx, time.Now(), 10); len(due) != 0 {
		t.Fatalf("deferred message still due: %+v", due)
	}
	got, _ := s.SpoolEntryByID(ctx, e.ID)
	if got.Attempts != 1 || strings.Join(got.To, ",") != "g@example.org" || got.LastError != "451 try later" {
		t.Fatalf("after defer: %+v", got)
	}
	f, err := s.OpenSpooled(e.ID)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n, oldest, _ := s.SpoolStats(ctx); n != 1 || oldest.IsZero() {
		t.Fatalf("spool stats %d %v", n, oldest)
	}
	if err := s.Dequeue(ctx, e.ID); err != nil {
		t.Fatal(err)
	}

	// Held during cut-over: one new message, one the final sync brought.
	if _, err := s.Append(ctx, inbox.ID, bytes.NewReader(testMessage(2)), nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	h1, _ := s.Enqueue(ctx, RouteHold, acct.ID, env, bytes.NewReader(testMessage(2)))
	h2, _ := s.Enqueue(ctx, RouteHold, acct.ID, env, bytes.NewReader(testMessage(3)))
	held, _ := s.Held(ctx, acct.ID)
	if len(held) != 2 {
		t.Fatalf("held %d", len(held))
	}
	if _, dup, err := s.DeliverHeld(ctx, h1.ID, inbox.ID); err != nil || !dup {
		t.Fatalf("duplicate by Message-ID not dropped: %v %v", dup, err)
	}
	uid, dup, err := s.DeliverHeld(ctx, h2.ID, inbox.ID)
	if err != nil || dup || uid != 2 {
		t.Fatalf("deliver held: %d %v %v", uid, dup, err)
	}
	msgs := mustMessages(t, s, inbox.ID)
	if raw, _ := s.ReadBody(msgs[1].ID); !bytes.Equal(raw, testMessage(3)) {
		t.Fatalf("held body %q", raw)
	}
	if n, _, _ := s.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool not empty: %d", n)
	}
	assertNoStrayFiles(t, s)
}

func TestSecondOpenIsRefusedAndReadOnlyWorks(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	newAccountWithInbox(t, s, "g@example.org")
	if _, err := Open(context.Background(), dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
	ro, err := Open(context.Background(), dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	accts, err := ro.Accounts(context.Background())
	if err != nil || len(accts) != 1 {
		t.Fatalf("read-only accounts: %v %v", accts, err)
	}
	if _, err := ro.CreateAccount(context.Background(), "x@example.org", "p", StateCapturing); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write on read-only store: %v", err)
	}
}

func TestMigrationRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if _, err := s.write.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(context.Background(), dir, Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer schema: %v", err)
	}
}

// TestMigrationMovesStructuresOut opens a store of schema 11, where each
// message row held its cached MIME structure, and one of the schema 12
// an earlier build wrote (the same, with a covering summary index), and
// checks that the migrations keep every structure, readable by its
// message, drop that index, and that an expunge removes the structure
// with its message.
func TestMigrationMovesStructuresOut(t *testing.T) {
	for _, from := range []struct {
		version int
		extra   string
	}{
		{11, ""},
		{12, "CREATE INDEX messages_summary ON messages (mailbox_id, uid, id, internal_date, internal_tz, size, flags)"},
	} {
		t.Run(fmt.Sprintf("from schema %d", from.version), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s := openTest(t, dir)
			_, inbox := newAccountWithInbox(t, s, "m@example.org")
			for i := 1; i <= 3; i++ {
				if _, err := s.Append(ctx, inbox.ID, bytes.NewReader(testMessage(i)), nil, time.Time{}); err != nil {
					t.Fatal(err)
				}
			}
			// Back to the older schema: the structures in the message rows.
			downgrade := []string{
				"DROP TABLE packed_bodies",
				"DROP TRIGGER message_structures_delete",
				"ALTER TABLE messages ADD COLUMN structure BLOB NOT NULL DEFAULT x''",
				"UPDATE messages SET structure = (SELECT structure FROM message_structures WHERE id = messages.id)",
				"DROP TABLE message_structures",
				fmt.Sprintf("PRAGMA user_version = %d", from.version),
			}
			if from.extra != "" {
				downgrade = append(downgrade, from.extra)
			}
			for _, q := range downgrade {
				if _, err := s.write.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			s.Close()
			s = openTest(t, dir)
			msgs := mustMessages(t, s, inbox.ID)
			if len(msgs) != 3 {
				t.Fatalf("%d messages after the migration", len(msgs))
			}
			for i, m := range msgs {
				st, err := s.Structure(ctx, m.ID)
				if err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("message %d", i+1); st.Envelope.Subject != want {
					t.Fatalf("message %d: subject %q after the migration, want %q", m.UID, st.Envelope.Subject, want)
				}
			}
			var indexes int
			if err := s.read.QueryRow("SELECT count(*) FROM sqlite_master WHERE name = 'messages_summary'").Scan(&indexes); err != nil || indexes != 0 {
				t.Fatalf("summary index left: %d (%v)", indexes, err)
			}
			if _, err := s.Expunge(ctx, inbox.ID, []uint32{msgs[0].UID}); err != nil {
				t.Fatal(err)
			}
			var left int
			if err := s.read.QueryRow("SELECT count(*) FROM message_structures").Scan(&left); err != nil || left != 2 {
				t.Fatalf("%d structures left after expunging 1 of 3 (%v)", left, err)
			}
			assertNoStrayFiles(t, s)
		})
	}
}

func TestPasswordHashFormat(t *testing.T) {
	h, err := HashPassword("pw", DefaultHashParams())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=65536,t=1,p=2$") || !CheckPassword(h, "pw") || CheckPassword(h, "pW") {
		t.Fatalf("hash %q", h)
	}
	for _, bad := range []string{"", "$argon2id$", "$bcrypt$v=19$m=1,t=1,p=1$AA$AA", strings.Replace(h, "m=65536", "m=0", 1)} {
		if CheckPassword(bad, "pw") {
			t.Fatalf("malformed hash %q matched", bad)
		}
	}
}

// assertNoStrayFiles checks that every body file belongs to a row and
// every row has its body file.
func assertNoStrayFiles(t *testing.T, s *Store) {
	t.Helper()
	ids := map[int64]bool{}
	rows, err := s.read.Query("SELECT id FROM messages UNION ALL SELECT id FROM spool")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids[id] = true
	}
	rows.Close()
	// Packed bodies: of a message, or of one whose unlink is queued (the
	// row goes with the queue's, at the next write).
	packed, packs := map[int64]bool{}, map[int64]bool{}
	rows, err = s.read.Query("SELECT id, pack, id IN (SELECT blob_id FROM unlink_queue) FROM packed_bodies")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, pack int64
		var queued bool
		rows.Scan(&id, &pack, &queued)
		packed[id], packs[pack] = true, true
		if !ids[id] && !queued {
			t.Errorf("packed body %d (pack %d) of no message", id, pack)
		}
	}
	rows.Close()
	files := map[int64]bool{}
	filepath.WalkDir(filepath.Join(s.dir, blobsDir), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			var id int64
			fmt.Sscan(d.Name(), &id)
			files[id] = true
			if !ids[id] && !packs[id] {
				t.Errorf("orphan body file %s", path)
			}
		}
		return nil
	})
	for id := range ids {
		if files[id] == packed[id] {
			t.Errorf("row %d: body file %v, packed %v (want one of them)", id, files[id], packed[id])
		}
	}
	for pack := range packs {
		if !files[pack] {
			t.Errorf("pack %d has no file", pack)
		}
	}
	// Every message has its cached structure, and no structure outlives
	// its message.
	var unmatched int
	err = s.read.QueryRow(`SELECT (SELECT count(*) FROM messages WHERE id NOT IN (SELECT id FROM message_structures)) +
		(SELECT count(*) FROM message_structures WHERE id NOT IN (SELECT id FROM messages))`).Scan(&unmatched)
	if err != nil || unmatched != 0 {
		t.Errorf("%d messages and structures without each other (%v)", unmatched, err)
	}
}

// TestConcurrentAppendsShareCommits: appends from many goroutines at once
// (concurrent SMTP deliveries) are committed in groups; every one gets a
// distinct UID and its own bytes.
func TestConcurrentAppendsShareCommits(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	acct, _ := s.CreateAccount(ctx, "group@example.org", "pw", StateCaptured)
	mb, _ := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "INBOX"})
	const n = 60
	type result struct {
		body string
		ins  Inserted
		err  error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("Message-ID: <g%d@example.org>\r\nSubject: %d\r\n\r\nbody %d\r\n", i, i, i)
			ins, err := s.Append(ctx, mb.ID, strings.NewReader(body), nil, time.Now())
			results <- result{body, ins, err}
		}()
	}
	wg.Wait()
	close(results)
	seen := map[uint32]bool{}
	for r := range results {
		if r.err != nil {
			t.Fatalf("append: %v", r.err)
		}
		if seen[r.ins.UID] {
			t.Fatalf("UID %d given twice", r.ins.UID)
		}
		seen[r.ins.UID] = true
		msgs, _ := s.Messages(ctx, mb.ID, []UIDRange{{r.ins.UID, r.ins.UID}})
		if len(msgs) != 1 {
			t.Fatalf("UID %d not stored", r.ins.UID)
		}
		got, _ := s.ReadBody(msgs[0].ID)
		if string(got) != r.body {
			t.Fatalf("UID %d holds %q, want %q", r.ins.UID, got, r.body)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d appends stored, want %d", len(seen), n)
	}
}

// TestLoginStormMemoryIsBounded checks 24 passwords at once with 64 MiB
// argon2id hashes and at most 2 hashes at a time: the heap never holds
// more than a few hashes' memory (unbounded, it would need 1.5 GiB).
func TestLoginStormMemoryIsBounded(t *testing.T) {
	ctx := context.Background()
	params := DefaultHashParams()
	params.Concurrency = 2
	st, err := Open(ctx, t.TempDir(), Options{Hash: params})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.CreateAccount(ctx, "storm@example.org", "pw", StateCaptured); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var max uint64
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			max = maxOf(max, ms.HeapInuse)
			select {
			case <-done:
				peak <- max
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := st.VerifyPassword(ctx, "storm@example.org", "pw"); !ok || err != nil {
				t.Errorf("verify: %v %v", ok, err)
			}
		}()
	}
	wg.Wait()
	close(done)
	if p := <-peak; p > 6*64<<20 {
		t.Fatalf("peak heap %d MiB while checking 24 passwords two at a time", p>>20)
	} else {
		t.Logf("peak heap %d MiB", p>>20)
	}
}

func maxOf(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func TestCaptureBatchStoresOneLegacyMessageOnce(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	_, inbox := newAccountWithInbox(t, s, "bob@example.org")
	b := s.NewBatch()
	for range 2 {
		if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: 50, LegacyUID: 50}, bytes.NewReader(testMessage(50))); err != nil {
			t.Fatal(err)
		}
	}
	res, err := b.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Duplicate || !res[1].Duplicate || res[1].UID != res[0].UID || res[0].UID != 50 {
		t.Fatalf("one legacy message twice in a batch: %+v", res)
	}
	if uids, err := s.UIDs(ctx, inbox.ID); err != nil || len(uids) != 1 {
		t.Fatalf("stored UIDs %v, %v; want one", uids, err)
	}
}

func TestTotalsAgreeWithStatus(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	_, inbox := newAccountWithInbox(t, s, "bob@example.org")
	check := func(when string) {
		t.Helper()
		st, err := s.Status(ctx, inbox.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		tot, err := s.Totals(ctx, inbox.ID)
		if err != nil {
			t.Fatal(err)
		}
		if tot.Messages != st.Messages || tot.Size != st.Size || tot.UIDNext != st.UIDNext || tot.UIDValidity != st.UIDValidity {
			t.Fatalf("%s: totals %+v, status %+v", when, tot, st)
		}
	}
	check("empty")
	b := s.NewBatch()
	for u := uint32(1); u <= 3; u++ {
		if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: u * 2}, bytes.NewReader(testMessage(int(u)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	check("three messages")
	if _, err := s.Totals(ctx, inbox.ID+100); !errors.Is(err, ErrNotFound) {
		t.Fatalf("totals of a missing mailbox: %v", err)
	}
}

// A replayed batch larger than one lookup query recognises every message.
func TestReplayedLargeBatchStoresNothingTwice(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	_, inbox := newAccountWithInbox(t, s, "bob@example.org")
	const n = copyLookupChunk + 100
	add := func() []Inserted {
		b := s.NewBatch()
		for u := uint32(1); u <= n; u++ {
			if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: u, LegacyUID: u}, bytes.NewReader(testMessage(int(u)))); err != nil {
				t.Fatal(err)
			}
		}
		res, err := b.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	add()
	for i, r := range add() {
		if !r.Duplicate || r.UID != uint32(i+1) {
			t.Fatalf("replayed message %d: %+v", i+1, r)
		}
	}
	if uids, err := s.UIDs(ctx, inbox.ID); err != nil || len(uids) != n {
		t.Fatalf("%d UIDs stored (%v), want %d", len(uids), err, n)
	}
}

// TestDeliverIsAtomic: a delivery to several mailboxes whose k-th
// destination fails leaves no copy anywhere (no row, no file), and the
// retry stores exactly one copy in each, one body on disk.
func TestDeliverIsAtomic(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{Hash: testHash})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var boxes []int64
	for _, name := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		a, err := s.CreateAccount(ctx, name, "pw", StateCaptured)
		if err != nil {
			t.Fatal(err)
		}
		mb, err := s.CreateMailbox(ctx, a.ID, MailboxSpec{Name: "INBOX"})
		if err != nil {
			t.Fatal(err)
		}
		boxes = append(boxes, mb.ID)
	}
	msg := "Message-ID: <atomic@example.org>\r\nSubject: to three\r\n\r\nbody\r\n"
	files := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(dir, blobsDir), func(_ string, d fs.DirEntry, _ error) error {
			if d != nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	broken := []Destination{{MailboxID: boxes[0]}, {MailboxID: boxes[1]}, {MailboxID: 999999}, {MailboxID: boxes[2]}}
	if _, err := s.Deliver(ctx, "s@example.net", broken, strings.NewReader(msg)); err == nil {
		t.Fatal("a delivery to a missing mailbox succeeded")
	}
	for _, id := range boxes {
		if msgs, _ := s.Messages(ctx, id, AllUIDs); len(msgs) != 0 {
			t.Fatalf("mailbox %d holds %d messages after a failed delivery", id, len(msgs))
		}
	}
	if n := files(); n != 0 {
		t.Fatalf("%d body files left by a failed delivery", n)
	}
	good := []Destination{{MailboxID: boxes[0]}, {MailboxID: boxes[1]}, {MailboxID: boxes[2]}, {Route: RouteLegacy, To: []string{"x@example.net"}}}
	done, err := s.Deliver(ctx, "s@example.net", good, strings.NewReader(msg))
	if err != nil || len(done) != 4 || done[3].SpoolID == 0 {
		t.Fatalf("retry: %+v %v", done, err)
	}
	for _, id := range boxes {
		msgs, _ := s.Messages(ctx, id, AllUIDs)
		if len(msgs) != 1 {
			t.Fatalf("mailbox %d holds %d messages after the retry", id, len(msgs))
		}
		if raw, _ := s.ReadBody(msgs[0].ID); string(raw) != msg {
			t.Fatalf("mailbox %d: body %q", id, raw)
		}
	}
	first, _ := s.Messages(ctx, boxes[0], AllUIDs)
	var st syscall.Stat_t
	if err := syscall.Stat(s.blobPath(first[0].ID), &st); err != nil || st.Nlink != 4 {
		t.Fatalf("the four copies are %d links of one body (%v)", st.Nlink, err)
	}
}

// TestMergeAccounts: two accounts of one legacy mailbox become one, named
// as asked, with the state of the one further along; no message either
// held is lost, those both held are kept once, and logins, held mail and
// subscriptions follow.
func TestMergeAccounts(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, t.TempDir(), Options{Hash: HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	typed, err := st.CreateAccount(ctx, "bob", "pw", StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	full, err := st.CreateAccount(ctx, "bob@example.org", "pw", StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	add := func(acct Account, box string, legacyUID uint32, body string) {
		t.Helper()
		m, err := st.MailboxByName(ctx, acct.ID, box)
		if errors.Is(err, ErrNotFound) {
			m, err = st.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: box, UIDValidity: 7, LegacyUIDValidity: 7})
		}
		if err != nil {
			t.Fatal(err)
		}
		b := st.NewBatch()
		if err := b.Add(ctx, NewMessage{MailboxID: m.ID, UID: legacyUID, LegacyUID: legacyUID}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	add(typed, "INBOX", 1, "Subject: one\r\n\r\n1\r\n")
	add(full, "INBOX", 1, "Subject: one\r\n\r\n1\r\n")
	add(typed, "INBOX", 2, "Subject: two\r\n\r\n2\r\n")
	add(full, "INBOX", 3, "Subject: three\r\n\r\n3\r\n")
	add(typed, "Archive", 1, "Subject: archived\r\n\r\nA\r\n")
	// The typed account was cut over and got local mail since.
	st.Transition(ctx, "bob", StateCapturing, StateCutover)
	st.Transition(ctx, "bob", StateCutover, StateCaptured)
	inbox, _ := st.MailboxByName(ctx, typed.ID, "INBOX")
	if _, err := st.Append(ctx, inbox.ID, strings.NewReader("Subject: local\r\n\r\nL\r\n"), nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	st.RecordLogins(ctx, []Login{{Account: "bob", Protocol: "imap", At: time.Now()}, {Account: "bob@example.org", Protocol: "imap", At: time.Now()}})

	res, err := st.MergeAccounts(ctx, "bob", "bob@example.org")
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept != "bob" || res.Moved != 1 || res.Duplicates != 1 || res.Folders != 0 {
		t.Fatalf("merge: %+v", res)
	}
	if _, err := st.Account(ctx, "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the old name is still an account: %v", err)
	}
	merged, err := st.Account(ctx, "bob@example.org")
	if err != nil || merged.ID != typed.ID || merged.State != StateCaptured {
		t.Fatalf("merged account %+v %v, want the captured one renamed", merged, err)
	}
	subjects := map[string][]string{}
	boxes, _ := st.Mailboxes(ctx, merged.ID)
	for _, b := range boxes {
		msgs, _ := st.Messages(ctx, b.ID, AllUIDs)
		for _, m := range msgs {
			body, _ := st.ReadBody(m.ID)
			subjects[b.Name] = append(subjects[b.Name], strings.SplitN(string(body), "\r\n", 2)[0])
		}
	}
	want := map[string][]string{"INBOX": {"Subject: one", "Subject: two", "Subject: local", "Subject: three"}, "Archive": {"Subject: archived"}}
	if !reflect.DeepEqual(subjects, want) {
		t.Fatalf("after the merge: %v, want %v", subjects, want)
	}
	logins, _ := st.Logins(ctx)
	if len(logins) != 1 || logins[0].Account != "bob@example.org" || logins[0].Count != 2 {
		t.Fatalf("logins: %+v", logins)
	}
	if ok, _ := st.VerifyPassword(ctx, "bob@example.org", "pw"); !ok {
		t.Fatal("the kept password hash does not verify")
	}
}

// TestEnsureAccounts: one call records the names not yet accounts, without
// a hash, and leaves an existing account (any spelling) as it was.
func TestEnsureAccounts(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	if _, err := s.CreateAccount(ctx, "ann@example.org", "correct horse", StateCaptured); err != nil {
		t.Fatal(err)
	}
	got, err := s.EnsureAccounts(ctx, []string{"bob@example.org", "ANN@example.org", " cat@example.org"}, StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	var summary []string
	for _, a := range got {
		summary = append(summary, fmt.Sprintf("%s %s %v", a.Name, a.State, a.HasPassword))
	}
	if want := "[bob@example.org capturing false ann@example.org captured true cat@example.org capturing false]"; fmt.Sprint(summary) != want {
		t.Fatalf("accounts %v, want %s", summary, want)
	}
	if ok, _ := s.VerifyPassword(ctx, "ann@example.org", "correct horse"); !ok {
		t.Fatal("the existing account lost its password")
	}
	if _, err := s.EnsureAccounts(ctx, []string{"dan@example.org", " "}, StateCapturing); err == nil {
		t.Fatal("an empty name was accepted")
	}
	if _, err := s.Account(ctx, "dan@example.org"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused call recorded an account: %v", err)
	}
}

// TestPackedBodiesLiveAsLongAsTheirMessages: a batch writes its bodies
// into one pack file; each reads back byte for byte; a body that fails
// half-way leaves no bytes in the pack; a copy shares the original's
// stretch; the pack goes with its last message, and a batch that commits
// nothing leaves no pack.
func TestPackedBodiesLiveAsLongAsTheirMessages(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	acct, inbox := newAccountWithInbox(t, s, "pack@example.org")
	archive, err := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "Archive"})
	if err != nil {
		t.Fatal(err)
	}
	packFiles := func() int {
		var n int
		if err := s.read.QueryRow("SELECT count(DISTINCT pack) FROM packed_bodies").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	b := s.NewBatch()
	for i := 1; i <= 3; i++ {
		if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, LegacyUID: uint32(i)}, bytes.NewReader(testMessage(i))); err != nil {
			t.Fatal(err)
		}
		// A body whose source fails half-way is not added.
		// (It is longer than the write buffer, so part of it reached the
		// file.)
		long := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 2000)
		broken := io.MultiReader(bytes.NewReader(testMessage(100+i)), bytes.NewReader(long), iotest.ErrReader(errors.New("connection reset")))
		if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, LegacyUID: uint32(100 + i)}, broken); err == nil {
			t.Fatal("a failed body was added")
		}
	}
	if _, err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := mustMessages(t, s, inbox.ID)
	if len(msgs) != 3 || packFiles() != 1 {
		t.Fatalf("%d messages in %d packs, want 3 in 1", len(msgs), packFiles())
	}
	var packSize int64
	for i, m := range msgs {
		raw, err := s.ReadBody(m.ID)
		if err != nil || !bytes.Equal(raw, testMessage(i+1)) {
			t.Fatalf("message %d reads back %q (%v), want %q", m.UID, raw, err, testMessage(i+1))
		}
		packSize += m.Size
	}
	f, err := s.OpenBody(msgs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	path, _ := f.Location()
	f.Close()
	if st, err := os.Stat(path); err != nil {
		t.Fatal(err)
	} else if st.Size() != packSize {
		t.Fatalf("pack %s: %d bytes, want the %d of its bodies alone", path, st.Size(), packSize)
	}
	assertNoStrayFiles(t, s)

	// Nothing committed: no pack left behind.
	b = s.NewBatch()
	if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, LegacyUID: 50}, bytes.NewReader(testMessage(50))); err != nil {
		t.Fatal(err)
	}
	b.Abort()
	b = s.NewBatch()
	if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, LegacyUID: 1}, bytes.NewReader(testMessage(1))); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx); err != nil { // legacy UID 1 is stored already: a duplicate
		t.Fatal(err)
	}
	if n := len(mustMessages(t, s, inbox.ID)); n != 3 || packFiles() != 1 {
		t.Fatalf("%d messages in %d packs after two batches that stored nothing", n, packFiles())
	}
	assertNoStrayFiles(t, s)

	if _, err := s.Copy(ctx, inbox.ID, []uint32{msgs[1].UID}, archive.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Expunge(ctx, inbox.ID, []uint32{msgs[0].UID, msgs[1].UID, msgs[2].UID}); err != nil {
		t.Fatal(err)
	}
	touch := func() { // any write drops the rows of done unlinks
		if err := s.writeTx(ctx, func(*sql.Tx) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	touch()
	assertNoStrayFiles(t, s)
	copies := mustMessages(t, s, archive.ID)
	if len(copies) != 1 || packFiles() != 1 {
		t.Fatalf("after the expunge: %d copies, %d packs; want 1 and 1", len(copies), packFiles())
	}
	if raw, err := s.ReadBody(copies[0].ID); err != nil || !bytes.Equal(raw, testMessage(2)) {
		t.Fatalf("the copy reads back %q (%v)", raw, err)
	}
	if _, err := s.Expunge(ctx, archive.ID, []uint32{copies[0].UID}); err != nil {
		t.Fatal(err)
	}
	touch()
	touch()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the pack outlived its last message: %v", err)
	}
	assertNoStrayFiles(t, s)

}

// TestPackIndexKeepsWholePacksWithinItsBound: the index of packed bodies
// holds whole packs, drops the oldest past its bound, and takes a body
// added to a pack it already holds (a copy sharing a stretch).
func TestPackIndexKeepsWholePacksWithinItsBound(t *testing.T) {
	var x packIndex
	fill := func(pack, first, n int64) {
		ids, ats := make([]int64, n), make([]packedAt, n)
		for i := range n {
			ids[i], ats[i] = first+i, packedAt{pack: pack, offset: i * 10, size: 10}
		}
		x.add(pack, ids, ats)
	}
	fill(1, 100, maxPackIndex/2)
	fill(2, 1_000_000, maxPackIndex/2)
	if at, ok := x.find(101); !ok || at != (packedAt{1, 10, 10}) {
		t.Fatalf("body 101: %v %v", at, ok)
	}
	x.add(2, []int64{5}, []packedAt{{2, 0, 10}}) // a copy's row
	if _, ok := x.find(5); !ok {
		t.Fatal("a body added to a known pack is not found")
	}
	fill(3, 2_000_000, 10)
	if _, ok := x.find(101); ok {
		t.Fatal("the oldest pack was kept past the bound")
	}
	for _, id := range []int64{5, 1_000_000, 2_000_009} {
		if _, ok := x.find(id); !ok {
			t.Fatalf("body %d dropped with another pack", id)
		}
	}
	if len(x.at) > maxPackIndex {
		t.Fatalf("%d bodies held, bound %d", len(x.at), maxPackIndex)
	}
}
