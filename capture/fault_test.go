package capture

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
	"mailcapture/storetest"
)

// TestCaptureSurvivesDroppedFetch: the legacy connection breaks in the
// middle of the bodies (at several points, inside literals and between
// them); each pass fails with an error, keeps what it committed, and the
// next pass over a healthy connection makes the copy exact, with nothing
// stored twice.
func TestCaptureSurvivesDroppedFetch(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	proxy := legacytest.StartProxy(t, d.IMAPAddr)
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := newEngine(st, d)
	e.IMAP.Address = proxy.Addr
	e.Connections = 1
	for _, cut := range []int64{9000, 60000, 150000, 400000} {
		proxy.CutAfter(cut)
		if _, err := e.Pass(ctx, user, password); err == nil {
			t.Fatalf("a pass over a connection cut after %d bytes succeeded", cut)
		}
	}
	proxy.CutAfter(0)
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}

// TestCaptureProgressesThroughRepeatedCuts: every legacy connection
// breaks after 150 KB, and one batch would hold the whole mailbox; the
// messages that came in whole before each break are kept, so each retry
// gets further and the copy ends exact.
func TestCaptureProgressesThroughRepeatedCuts(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	proxy := legacytest.StartProxy(t, d.IMAPAddr)
	proxy.CutAfter(150000)
	st := openStore(t)
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	e := newEngine(st, d)
	e.IMAP.Address = proxy.Addr
	e.Connections, e.BatchMessages, e.FetchChunk = 1, 500, 2000
	failures := 0
	for {
		_, err := e.Pass(ctx, user, password)
		if err == nil {
			break
		}
		if failures++; failures == 200 {
			t.Fatalf("no copy after %d passes cut after 150 KB: %v", failures, err)
		}
	}
	proxy.CutAfter(0)
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
	t.Logf("copied exactly through %d broken connections", failures)
}

// TestCaptureSurvivesFullDisk: the local disk fills up during a capture;
// the pass fails with an error and leaves no partial message; once space
// is free again the next passes make the copy exact.
func TestCaptureSurvivesFullDisk(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	dir := scratchfs.MustMount(t, 8)
	st := storetest.Open(t, filepath.Join(dir, "store"))
	st.CreateAccount(ctx, user, password, store.StateCapturing)
	// Leave about 600 KB free: less than the mailbox needs.
	filler := filepath.Join(dir, "filler")
	scratchfs.Fill(t, dir, filler, 600<<10)
	e := newEngine(st, d)
	if _, err := e.Pass(ctx, user, password); err == nil {
		t.Fatal("a pass onto a full disk succeeded")
	}
	os.Remove(filler)
	if _, err := e.Converge(ctx, user, password, 5); err != nil {
		t.Fatal(err)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}
