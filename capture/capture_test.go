package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

var testHash = store.HashParams{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}

const (
	user     = "ann@example.org"
	password = `pa"ss w\ord`
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st := storetest.Open(t, "")
	return st
}

func newEngine(st *store.Store, d *legacytest.Dovecot) *Engine {
	return &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second},
		BatchMessages: 7, FetchChunk: 11, MetadataWindow: 13, VerifySample: 5}
}

// localSnapshot reads the store in the shape of a legacy snapshot.
func localSnapshot(t *testing.T, st *store.Store, account string) map[string]*legacytest.SnapshotFolder {
	t.Helper()
	ctx := context.Background()
	acct, err := st.Account(ctx, account)
	if err != nil {
		t.Fatal(err)
	}
	boxes, err := st.Mailboxes(ctx, acct.ID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*legacytest.SnapshotFolder{}
	for _, b := range boxes {
		f := &legacytest.SnapshotFolder{Name: b.Name, Attrs: append([]string(nil), b.SpecialUse...), Subscribed: b.Subscribed,
			UIDValidity: b.UIDValidity, UIDNext: b.UIDNext}
		sort.Strings(f.Attrs)
		msgs, err := st.Messages(ctx, b.ID, store.AllUIDs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			body, err := st.ReadBody(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			flags := append([]string(nil), m.Flags...)
			sort.Strings(flags)
			f.Messages = append(f.Messages, legacytest.SnapshotMessage{UID: m.UID, Flags: flags, InternalDate: m.InternalDate, Size: m.Size, Body: body})
		}
		out[b.Name] = f
	}
	return out
}

// assertSameMailbox checks invariant 3 at the store: same folders,
// UIDVALIDITY, UIDs, flags, internal dates, sizes and bytes; and
// invariant 4: local UIDNEXT >= legacy UIDNEXT.
func assertSameMailbox(t *testing.T, legacy, local map[string]*legacytest.SnapshotFolder) {
	t.Helper()
	for name, lf := range legacy {
		if hasString(lf.Attrs, `\Noselect`) || hasString(lf.Attrs, `\NonExistent`) {
			continue // a parent that holds no messages, only children
		}
		f, ok := local[name]
		if !ok {
			t.Errorf("folder %q missing locally", name)
			continue
		}
		if f.UIDValidity != lf.UIDValidity || f.UIDNext < lf.UIDNext || f.Subscribed != lf.Subscribed ||
			strings.Join(f.Attrs, " ") != strings.Join(lf.Attrs, " ") {
			t.Errorf("folder %q: local uidvalidity %d uidnext %d subscribed %v attrs %v; legacy %d %d %v %v",
				name, f.UIDValidity, f.UIDNext, f.Subscribed, f.Attrs, lf.UIDValidity, lf.UIDNext, lf.Subscribed, lf.Attrs)
		}
		if len(f.Messages) != len(lf.Messages) {
			t.Errorf("folder %q: %d messages locally, %d legacy", name, len(f.Messages), len(lf.Messages))
			continue
		}
		for i, lm := range lf.Messages {
			m := f.Messages[i]
			if m.UID != lm.UID || strings.Join(m.Flags, " ") != strings.Join(lm.Flags, " ") || !m.InternalDate.Equal(lm.InternalDate) ||
				m.Size != lm.Size || !bytes.Equal(m.Body, lm.Body) {
				t.Errorf("folder %q message %d: local UID %d flags %v date %v size %d (%d bytes); legacy UID %d flags %v date %v size %d (%d bytes)",
					name, i, m.UID, m.Flags, m.InternalDate, m.Size, len(m.Body), lm.UID, lm.Flags, lm.InternalDate, lm.Size, len(lm.Body))
			}
		}
	}
	for name := range local {
		if lf, ok := legacy[name]; ok && (hasString(lf.Attrs, `\Noselect`) || hasString(lf.Attrs, `\NonExistent`)) {
			t.Errorf("folder %q is not selectable on the legacy server but exists locally", name)
		}
		if _, ok := legacy[name]; !ok {
			t.Errorf("folder %q exists locally but not on the legacy server", name)
		}
	}
}

func populate(t *testing.T, d *legacytest.Dovecot) {
	msgs := legacytest.Generate(7, 120, 60000)
	d.AddUser(t, user, password)
	d.Populate(t, user, password, []legacytest.Folder{
		{Name: "INBOX", Subscribed: true, Messages: msgs[:70], Expunge: []int{0, 5, 6, 7, 30}},
		{Name: "Sent", Subscribed: true, Messages: msgs[70:90]},
		{Name: "Drafts", Messages: msgs[90:93]},
		{Name: "Trash", Subscribed: true},
		{Name: "Projects/2024/Q1", Subscribed: true, Messages: msgs[93:110]},
		{Name: "Projects/Old", Messages: msgs[110:120], Expunge: []int{9}},
	})
}

func TestFullCopyIsExact(t *testing.T) {
	for _, opts := range []legacytest.Options{
		{Separator: ".", Prefix: "INBOX."},
		{Separator: "/", NoSpecialUse: true},
	} {
		t.Run(fmt.Sprintf("separator %q prefix %q", opts.Separator, opts.Prefix), func(t *testing.T) {
			ctx := context.Background()
			d := legacytest.Start(t, opts)
			populate(t, d)
			st := openStore(t)
			if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
				t.Fatal(err)
			}
			e := newEngine(st, d)
			conv, err := e.Converge(ctx, user, password, 5)
			if err != nil {
				t.Fatal(err)
			}
			if !conv.Verification.OK() || conv.Verification.Sampled == 0 {
				t.Fatalf("verification: %+v", conv.Verification)
			}
			first := conv.Passes[0]
			if first.Added != 114 || first.FoldersCreated == 0 {
				t.Fatalf("first pass: %+v", first)
			}
			if last := conv.Passes[len(conv.Passes)-1]; last.Changed() {
				t.Fatalf("converged on a pass that changed things: %+v", last)
			}
			legacy := d.Snapshot(t, user, password)
			if opts.NoSpecialUse {
				// The legacy server announces none; mailcapture guesses from
				// names and records that it guessed.
				for _, f := range legacy {
					var kept []string
					for _, a := range f.Attrs {
						if !isSpecialUse(imap.MailboxAttr(a)) {
							kept = append(kept, a)
						}
					}
					f.Attrs = kept
				}
				want := map[string]string{"Sent": `\Sent`, "Drafts": `\Drafts`, "Trash": `\Trash`}
				for name, attr := range want {
					legacy[name].Attrs = []string{attr}
				}
			}
			assertSameMailbox(t, legacy, localSnapshot(t, st, user))
			acct, _ := st.Account(ctx, user)
			if acct.LegacySeparator != opts.Separator || acct.LegacyPrefix != opts.Prefix || acct.SpecialUseGuessed != opts.NoSpecialUse {
				t.Fatalf("namespace recorded as prefix %q separator %q guessed %v", acct.LegacyPrefix, acct.LegacySeparator, acct.SpecialUseGuessed)
			}
			if acct.LegacyMessages != 114 || acct.LastSyncAt.IsZero() || acct.LastError != "" {
				t.Fatalf("account progress: %+v", acct)
			}
			// A pass over the unchanged mailbox changes nothing.
			res, err := e.Pass(ctx, user, password)
			if err != nil || res.Changed() {
				t.Fatalf("idle pass: %+v %v", res, err)
			}
		})
	}
}

func TestDeltaSync(t *testing.T) {
	ctx := context.Background()
	d, st, e := setupCapture(t)
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	oldUIDValidity := localSnapshot(t, st, user)["Projects/Old"].UIDValidity

	// Change everything a user can change on the legacy server.
	c := d.Login(t, user, password)
	mustOK := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := c.Select("INBOX", nil).Wait()
	mustOK("select", err)
	var seq imap.SeqSet
	seq.AddNum(1, 2)
	mustOK("store flags", c.Store(seq, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged, "NewKeyword"}}, nil).Close())
	seq = imap.SeqSet{}
	seq.AddNum(3)
	mustOK("store deleted", c.Store(seq, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close())
	mustOK("expunge", c.Expunge().Close())
	mustOK("unselect", c.Unselect().Wait())
	mustOK("rename", c.Rename("Projects/2024", "Projects/2025", nil).Wait())
	mustOK("delete", c.Delete("Trash").Wait())
	mustOK("delete Old", c.Delete("Projects/Old").Wait())
	mustOK("recreate Old", c.Create("Projects/Old", nil).Wait())
	c.Logout().Wait()
	more := legacytest.Generate(8, 6, 5000)
	d.Populate(t, user, password, []legacytest.Folder{
		{Name: "INBOX", Messages: more[:3]},
		{Name: "Projects/Old", Messages: more[3:5]},
		{Name: "New Folder", Messages: more[5:]},
	})

	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	p := conv.Passes[0]
	if p.Added != 6 || p.Expunged != 1 || p.FlagsChanged != 2 || p.FoldersDeleted != 1 || p.FoldersRecopied != 1 || p.FoldersCreated != 1 {
		t.Fatalf("delta pass: %+v", p)
	}
	local := localSnapshot(t, st, user)
	if local["Projects/Old"].UIDValidity == oldUIDValidity {
		t.Fatal("recreated folder kept its old UIDVALIDITY")
	}
	if local["Projects/2025/Q1"] == nil || len(local["Projects/2025/Q1"].Messages) != 17 {
		t.Fatalf("renamed folder: %+v", local["Projects/2025/Q1"] != nil)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), local)
}

// TestUnchangedFoldersAreSkipped: after convergence a pass compares no
// folder message by message while the legacy server (CONDSTORE) reports
// them unchanged; a flag change alone at the legacy server (same count,
// same UIDNEXT) and a message gone from the local mirror are each still
// found and repaired.
func TestUnchangedFoldersAreSkipped(t *testing.T) {
	ctx := context.Background()
	d, st, e := setupCapture(t)
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	p, err := e.Pass(ctx, user, password)
	if err != nil {
		t.Fatal(err)
	}
	if p.Changed() || p.Folders == 0 || p.FoldersUnchanged != p.Folders || p.LegacyMessages != 120-6 {
		t.Fatalf("pass over an unchanged mailbox: %+v", p)
	}

	// A keyword set at the legacy server: only the modification sequence
	// tells.
	c := d.Login(t, user, password)
	if _, err := c.Select("Projects/2024/Q1", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	var seq imap.SeqSet
	seq.AddNum(4)
	if err := c.Store(seq, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{"OnlyAFlag"}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	// A message gone from the local mirror of Sent (as a verification
	// repair leaves it).
	acct, err := st.Account(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	sent, err := st.MailboxByName(ctx, acct.ID, "Sent")
	if err != nil {
		t.Fatal(err)
	}
	uids, err := st.UIDs(ctx, sent.ID)
	if err != nil || len(uids) < 5 {
		t.Fatalf("Sent UIDs %v, %v", uids, err)
	}
	if _, err := st.Expunge(ctx, sent.ID, uids[4:5]); err != nil {
		t.Fatal(err)
	}

	p, err = e.Pass(ctx, user, password)
	if err != nil {
		t.Fatal(err)
	}
	if p.FlagsChanged != 1 || p.Added != 1 || p.Expunged != 0 || p.FoldersUnchanged != p.Folders-2 {
		t.Fatalf("pass after a legacy flag change and a local loss: %+v", p)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
	if p, err = e.Pass(ctx, user, password); err != nil || p.Changed() || p.FoldersUnchanged != p.Folders {
		t.Fatalf("pass after the repair: %+v, %v", p, err)
	}
}

// TestResumeNeverDuplicates interrupts passes right after their 1st, 2nd,
// ... batch commits; the passes that follow resume, and the end result is
// exact with nothing stored twice.
func TestResumeNeverDuplicates(t *testing.T) {
	ctx := context.Background()
	d, st, e := setupCapture(t)
	for stopAfter := 1; stopAfter <= 6; stopAfter++ {
		pctx, cancel := context.WithCancel(ctx)
		commits := 0
		e.afterCommit = func() {
			if commits++; commits == stopAfter {
				cancel()
			}
		}
		_, err := e.Pass(pctx, user, password)
		cancel()
		if err == nil && stopAfter > 1 {
			// Cancelled passes commit what streamed in whole: the
			// earlier ones left fewer than stopAfter batches to do.
			break
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("pass %d: want it cancelled, got %v", stopAfter, err)
		}
	}
	e.afterCommit = nil
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, p := range conv.Passes {
		total += p.Added
	}
	if total >= 114 {
		t.Fatalf("the final passes copied %d messages: the interrupted ones saved nothing", total)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}

func TestBadCredentialsStopTheJob(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, user, password)
	st := openStore(t)
	st.CreateAccount(ctx, user, "whatever", store.StateCapturing)
	e := newEngine(st, d)
	obs := &countingObserver{}
	e.Observer = obs
	_, err := e.Pass(ctx, user, "wrong password")
	if !errors.Is(err, legacyclient.ErrBadCredentials) {
		t.Fatalf("want legacyclient.ErrBadCredentials, got %v", err)
	}
	if obs.kinds[labels.LegacyAuth] != 1 {
		t.Fatalf("legacy errors counted: %v", obs.kinds)
	}
}

// TestHungLegacyServer: a server that greets and then never answers fails
// the pass within the timeout instead of hanging it.
func TestHungLegacyServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("* OK IMAP4rev1 ready\r\n"))
			defer c.Close() // silent from now on
		}
	}()
	ctx := context.Background()
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	obs := &countingObserver{}
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: ln.Addr().String(), TLS: "none", Timeout: 300 * time.Millisecond}, Observer: obs}
	start := time.Now()
	_, err = e.Pass(ctx, user, password)
	if !errors.Is(err, legacyclient.ErrTimeout) {
		t.Fatalf("want legacyclient.ErrTimeout, got %v", err)
	}
	if obs.kinds[labels.LegacyTimeout] != 1 {
		t.Fatalf("legacy errors counted: %v", obs.kinds)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("pass took %v to fail", elapsed)
	}
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestLargeMessageStreams copies a 50 MB message and checks that the heap
// never grew by anything near its size: bodies stream to the store.
func TestLargeMessageStreams(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, user, password)
	var big bytes.Buffer
	big.WriteString("Subject: big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	line := strings.Repeat("QUJD", 19) + "\r\n"
	for big.Len() < 50<<20 {
		big.WriteString(line)
	}
	size := big.Len()
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: []legacytest.Message{{Body: big.Bytes(), InternalDate: time.Now()}}}})
	big = bytes.Buffer{}
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	stopSampling := sampleHeap(5 * time.Millisecond)
	res, err := newEngine(st, d).Pass(ctx, user, password)
	growth := stopSampling()
	if err != nil || res.Added != 1 || res.AddedBytes != int64(size) {
		t.Fatalf("pass: %+v %v", res, err)
	}
	t.Logf("50 MB message: heap grew by at most %.1f MB", float64(growth)/1e6)
	if growth > 16<<20 {
		t.Fatalf("heap grew by %d bytes while copying a %d-byte message", growth, size)
	}
}

// TestVerificationCatchesAndRepairsCorruption damages a stored body; the
// verification pass reports it, removes the bad copy, and Converge copies
// it again before declaring the account ready.
func TestVerificationCatchesAndRepairsCorruption(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, user, password)
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(3, 10, 5000)}})
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := newEngine(st, d)
	if _, err := e.Pass(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	acct, _ := st.Account(ctx, user)
	inbox, _ := st.MailboxByName(ctx, acct.ID, "INBOX")
	msgs, _ := st.Messages(ctx, inbox.ID, store.AllUIDs)
	damage(t, st, msgs[0].ID)
	v, err := e.Verify(ctx, user, password)
	if err != nil {
		t.Fatal(err)
	}
	if v.OK() || !strings.Contains(strings.Join(v.Mismatches, ";"), "SHA-256") {
		t.Fatalf("corruption not found: %+v", v)
	}
	// Damage the last message too (always in the sample): Converge finds
	// it, counts it, repairs it, and still repairs the first.
	damage(t, st, msgs[len(msgs)-1].ID)
	obs := &countingObserver{}
	e.Observer = obs
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil || !conv.Verification.OK() {
		t.Fatalf("repair: %+v %v", conv, err)
	}
	if obs.mismatches != 1 || obs.copied != 2 {
		t.Fatalf("observer after repair: mismatches %d copied %d", obs.mismatches, obs.copied)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}

// countingObserver records capture events for tests.
type countingObserver struct {
	mu         sync.Mutex
	copied     int
	kinds      map[labels.LegacyKind]int
	mismatches int
}

func (o *countingObserver) Copied(n int, _ int64) { o.mu.Lock(); o.copied += n; o.mu.Unlock() }
func (o *countingObserver) LegacyError(kind labels.LegacyKind) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.kinds == nil {
		o.kinds = map[labels.LegacyKind]int{}
	}
	o.kinds[kind]++
}
func (o *countingObserver) VerificationMismatches(n int) {
	o.mu.Lock()
	o.mismatches += n
	o.mu.Unlock()
}
func (o *countingObserver) JobStarted()                     {}
func (o *countingObserver) JobFinished(bool, time.Duration) {}
func (o *countingObserver) PassFailed()                     {}

// damage changes a stored body's bytes, keeping its size.
func damage(t *testing.T, st *store.Store, id int64) {
	t.Helper()
	f, err := st.OpenBody(id)
	if err != nil {
		t.Fatal(err)
	}
	path, offset := f.Location()
	var b [1]byte
	if _, err := f.ReadAt(b[:], 2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b[0] ^= 0x20
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(b[:], offset+2); err != nil {
		t.Fatal(err)
	}
}

// setupCapture starts a Dovecot holding the standard test mailbox, and
// returns it with a store that knows the account and an engine.
func setupCapture(t *testing.T) (*legacytest.Dovecot, *store.Store, *Engine) {
	t.Helper()
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	st := openStore(t)
	if _, err := st.CreateAccount(context.Background(), user, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	return d, st, newEngine(st, d)
}

// sampleHeap samples the heap in use every interval until the returned
// function is called, which returns the peak growth over the heap at the
// start (after a collection).
func sampleHeap(interval time.Duration) (stop func() uint64) {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-sampled
		return peak.Load() - min(base.HeapInuse, peak.Load())
	}
}

// TestCancelledPassCommitsWhatStreamedIn: when a pass is cancelled (at
// shutdown) in the middle of a batch, the messages that had streamed in
// whole are committed, not thrown away; the next pass copies the rest
// exactly.
func TestCancelledPassCommitsWhatStreamedIn(t *testing.T) {
	ctx := context.Background()
	d, st, e := setupCapture(t)
	e.BatchMessages = 1000 // one batch per folder: nothing commits before the cancel
	e.Connections = 1
	pctx, cancel := context.WithCancel(ctx)
	added := 0
	e.afterAdd = func() {
		if added++; added == 25 {
			cancel()
		}
	}
	_, err := e.Pass(pctx, user, password)
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want the pass cancelled, got %v", err)
	}
	e.afterAdd = nil
	acct, _ := st.Account(ctx, user)
	stored, err := st.AccountProgress(ctx, acct.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Messages < 25 {
		t.Fatalf("%d messages stored after the cancel, want the 25 streamed in", stored.Messages)
	}
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}
