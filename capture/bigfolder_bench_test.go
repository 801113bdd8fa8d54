package capture

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
)

// BenchmarkCaptureBigFolder captures one INBOX of 20,000 and one of
// 100,000 messages (up to 20 KB each) from a private Dovecot, each into a
// fresh store, with IMAP alone and with the legacy POP3 server's UIDLs
// mapped too. It prints the cost per message at both sizes (their ratio:
// flat is 1.0), the share of the UIDL mapping in the copy time, and the
// peak heap at both sizes. Each kind of capture runs twice, in turn, and
// the faster counts. The reference, measured in the same run: the raw
// read of each INBOX.
func BenchmarkCaptureBigFolder(b *testing.B) {
	ctx := context.Background()
	scratch := scratchfs.Mount(b, 8192)
	d := legacytest.Start(b, legacytest.Options{Dir: scratchfs.Mount(b, 4096)})
	sizes := []int{20000, 100000}
	for _, n := range sizes {
		name := fmt.Sprintf("big%d@example.org", n)
		d.AddUser(b, name, password)
		d.SeedInbox(b, name, legacytest.Generate(uint64(n), n, 20000))
		if _, err := legacytest.RawRead(d.IMAPAddr, name, password, []string{"INBOX"}); err != nil {
			b.Fatal(err) // gives the messages their UIDs and Dovecot its indexes
		}
	}
	type run struct {
		raw, copy, withPOP3 time.Duration
		peak, peakPOP3      uint64
	}
	for i := 0; i < b.N; i++ {
		var runs [2]run
		for j, n := range sizes {
			name := fmt.Sprintf("big%d@example.org", n)
			syscall.Sync()
			start := time.Now()
			if _, err := legacytest.RawRead(d.IMAPAddr, name, password, []string{"INBOX"}); err != nil {
				b.Fatal(err)
			}
			runs[j].raw = time.Since(start)
			// Each kind twice, in turn, the faster kept: the disk's drift
			// between two runs is as large as what is measured.
			for k := range 4 {
				pop3 := k%2 == 1
				r, err := captureBig(ctx, filepath.Join(scratch, fmt.Sprintf("store-%d-%d-%d", i, n, k)), d, name, n, pop3)
				if err != nil {
					b.Fatal(err)
				}
				if pop3 && (runs[j].withPOP3 == 0 || r.took < runs[j].withPOP3) {
					runs[j].withPOP3 = r.took
				}
				if !pop3 && (runs[j].copy == 0 || r.took < runs[j].copy) {
					runs[j].copy = r.took
				}
				if pop3 {
					runs[j].peakPOP3 = max(runs[j].peakPOP3, r.peak)
				} else {
					runs[j].peak = max(runs[j].peak, r.peak)
				}
			}
		}
		small, big := runs[0], runs[1]
		per := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }
		for j, n := range sizes {
			r := runs[j]
			fmt.Printf("big folder bench: %d messages: IMAP only %.2fs (%.1f µs/msg, %.2fx the raw read's %.1f µs/msg); with POP3 UIDLs %.2fs (%+.1f%% of the copy, target <= 10%%); peak heap %.0f MB, %.0f MB with POP3\n",
				n, r.copy.Seconds(), per(r.copy, n), r.copy.Seconds()/r.raw.Seconds(), per(r.raw, n),
				r.withPOP3.Seconds(), 100*(r.withPOP3.Seconds()-r.copy.Seconds())/r.copy.Seconds(), float64(r.peak)/1e6, float64(r.peakPOP3)/1e6)
		}
		flat := per(big.copy, sizes[1]) / per(small.copy, sizes[0])
		flatPOP3 := per(big.withPOP3, sizes[1]) / per(small.withPOP3, sizes[0])
		rawFlat := per(big.raw, sizes[1]) / per(small.raw, sizes[0])
		fmt.Printf("big folder bench: cost per message at 100,000 against 20,000: %.2fx IMAP only, %.2fx with POP3 (raw read: %.2fx; target: flat), peak heap %.2fx\n",
			flat, flatPOP3, rawFlat, float64(big.peak)/float64(max(small.peak, 1)))
		b.ReportMetric(flat, "x-per-msg-100k/20k")
		b.ReportMetric(100*(big.withPOP3.Seconds()-big.copy.Seconds())/big.copy.Seconds(), "uidl-%-100k")
		b.ReportMetric(float64(big.peak)/1e6, "peak-heap-MB-100k")
	}
}

type bigCapture struct {
	took time.Duration
	peak uint64
}

// captureBig copies the account's INBOX into a fresh store over IMAP, with
// the legacy POP3 server's UIDLs too when pop3 is set (timed: the first
// pass and, if any message was left without its UIDL, the mapping after
// it), sampling the heap all along.
func captureBig(ctx context.Context, dir string, d *legacytest.Dovecot, name string, n int, pop3 bool) (r bigCapture, err error) {
	stop := sampleHeap(20 * time.Millisecond)
	defer func() { r.peak = stop() }()
	st, err := store.Open(ctx, dir, store.Options{Hash: testHash})
	if err != nil {
		return r, err
	}
	defer st.Close()
	if _, err := st.CreateAccount(ctx, name, password, store.StateCapturing); err != nil {
		return r, err
	}
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: time.Minute}}
	if pop3 {
		e.POP3 = legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: time.Minute}
	}
	syscall.Sync()
	start := time.Now()
	res, err := e.Pass(ctx, name, password)
	r.took = time.Since(start)
	if err != nil {
		return r, err
	}
	if res.Added != n {
		return r, fmt.Errorf("%s: copied %d messages, want %d", name, res.Added, n)
	}
	if !pop3 {
		return r, nil
	}
	acct, err := st.Account(ctx, name)
	if err != nil {
		return r, err
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		return r, err
	}
	if left, err := st.UnmappedUIDLs(ctx, inbox.ID); err != nil || left != 0 {
		return r, fmt.Errorf("%s: %d messages left without their UIDL (%v)", name, left, err)
	}
	return r, nil
}
