package capture

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
)

// BenchmarkCapture20k compares, on one generated mailbox (20,000 messages,
// about 200 MB, six folders) in a private Dovecot: mailcapture's full
// capture, mbsync pulling into a Maildir with fsync on, and the raw limit
// (one connection reading UID FETCH 1:* BODY.PEEK[] of every folder without
// parsing). It also times a converged delta pass and samples the heap.
func BenchmarkCapture20k(b *testing.B) {
	const perFolder = 20000 / 6
	d := legacytest.Start(b, legacytest.Options{})
	d.AddUser(b, user, password)
	names := []string{"INBOX", "Sent", "Archive", "Lists/golang", "Lists/debian", "Trash"}
	var folders []legacytest.Folder
	for i, name := range names {
		n := perFolder
		if i == 0 {
			n = 20000 - perFolder*5
		}
		folders = append(folders, legacytest.Folder{Name: name, Subscribed: true, Messages: legacytest.Generate(uint64(100+i), n, 70000)})
	}
	start := time.Now()
	errs := make(chan error, len(folders))
	for _, f := range folders {
		go func() { errs <- d.Upload(user, password, []legacytest.Folder{f}) }()
	}
	for range folders {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	var totalBytes int64
	for _, f := range folders {
		for _, m := range f.Messages {
			totalBytes += int64(len(m.Body))
		}
	}
	fmt.Printf("capture bench: 20000 messages, %.0f MB in %d folders (uploaded in %.1fs)\n", float64(totalBytes)/1e6, len(folders), time.Since(start).Seconds())
	folders = nil // the heap measured below is mailcapture's alone
	// mailcapture's store and mbsync's Maildir live on a fresh journaled
	// ext4 (see scratchfs), and nothing is deleted until every timed run
	// is over.
	// Each timed part starts with nothing left to write back from the
	// parts before it (scratchfs.Timed and the sync in captureOnce), so none
	// pays for another's disk writes.
	scratch := scratchfs.Mount(b, 4096)
	for i := 0; i < b.N; i++ {
		peak, capture, delta, compare, err := captureOnce(filepath.Join(scratch, fmt.Sprintf("store-%d", i)), d)
		if err != nil {
			b.Fatal(err)
		}
		mbsync := scratchfs.Timed(b, func() error { return runMbsync(b, filepath.Join(scratch, fmt.Sprintf("mbsync-%d", i)), d) })
		raw := scratchfs.Timed(b, func() error { _, err := legacytest.RawRead(d.IMAPAddr, user, password, names); return err })
		fmt.Printf("capture bench: raw read %.2fs, mbsync %.2fs, mailcapture %.2fs\n", raw.Seconds(), mbsync.Seconds(), capture.Seconds())
		fmt.Printf("capture bench: mailcapture is %.1fx faster than mbsync (target >= 3x), %.1fx the raw limit (target <= 4x)\n",
			mbsync.Seconds()/capture.Seconds(), capture.Seconds()/raw.Seconds())
		fmt.Printf("capture bench: converged delta pass %.3fs (target < 0.5s), peak heap %.0f MB (target < 100 MB)\n",
			delta.Seconds(), float64(peak)/1e6)
		fmt.Printf("capture bench: converged delta pass comparing every message (no CONDSTORE) %.3fs (target < 0.5s)\n", compare.Seconds())
		b.ReportMetric(mbsync.Seconds()/capture.Seconds(), "x-mbsync")
		b.ReportMetric(capture.Seconds()/raw.Seconds(), "x-raw")
		b.ReportMetric(delta.Seconds(), "delta-s")
		b.ReportMetric(compare.Seconds(), "compare-delta-s")
		b.ReportMetric(float64(peak)/1e6, "peak-heap-MB")
	}
}

// captureOnce runs a full capture into a fresh store (timed from the
// store's opening to the end of the first pass), then two delta passes over
// the unchanged mailbox (each timed on its own): one where CONDSTORE lets
// it skip unchanged folders, one comparing every message's metadata, as it
// does with a legacy server without CONDSTORE. The heap is sampled all
// along.
func captureOnce(dir string, d *legacytest.Dovecot) (peak uint64, full, delta, compare time.Duration, err error) {
	ctx := context.Background()
	stopSampling := sampleHeap(20 * time.Millisecond)
	defer func() { peak = stopSampling() }()
	syscall.Sync()
	start := time.Now()
	st, err := store.Open(ctx, dir, store.Options{Hash: testHash})
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer st.Close()
	if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
		return 0, 0, 0, 0, err
	}
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: time.Minute}}
	res, err := e.Pass(ctx, user, password)
	full = time.Since(start)
	if err == nil && res.Added != 20000 {
		err = fmt.Errorf("capture copied %d messages, want 20000", res.Added)
	}
	deltaPass := func(noCondStore bool, wantSkipped int) (time.Duration, error) {
		e.NoCondStore = noCondStore
		syscall.Sync()
		start := time.Now()
		res, err := e.Pass(ctx, user, password)
		took := time.Since(start)
		switch {
		case err != nil:
			return took, err
		case res.Changed():
			return took, fmt.Errorf("delta pass over an unchanged mailbox changed things: %+v", res)
		case res.FoldersUnchanged != wantSkipped:
			return took, fmt.Errorf("delta pass skipped %d folders, want %d", res.FoldersUnchanged, wantSkipped)
		}
		return took, nil
	}
	if err == nil {
		delta, err = deltaPass(false, res.Folders)
	}
	if err == nil {
		compare, err = deltaPass(true, 0)
	}
	return 0, full, delta, compare, err
}

// runMbsync pulls the whole mailbox into a fresh Maildir with mbsync.
func runMbsync(b *testing.B, dir string, d *legacytest.Dovecot) error {
	out, err := exec.Command("mbsync", "-q", "-c", legacytest.MbsyncConfig(b, dir, d.IMAPAddr, user, password), "-a").CombinedOutput()
	if err != nil {
		return fmt.Errorf("mbsync: %v\n%s", err, out)
	}
	return nil
}
