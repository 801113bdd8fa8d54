package status

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailcapture/scratchfs"
	"mailcapture/store"
	"mailcapture/storetest"
)

// BenchmarkStatusAtScale measures one status report (what /status.json
// and each /metrics scrape read: totals, accounts by state, the spool,
// and a line per account) on a store of 1,000 messages, and again once
// it holds 100,000 and 1,000,000, over 20 accounts: the time must not
// grow with the messages.
func BenchmarkStatusAtScale(b *testing.B) {
	ctx := context.Background()
	// A million body files need a million inodes: ext4 gives one per
	// 16 KiB (the image is sparse).
	scratch := scratchfs.Mount(b, 20480)
	st, err := store.Open(ctx, filepath.Join(scratch, "store"), store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const accounts = 20
	var inboxes []int64
	for i := range accounts {
		a := storetest.Account(b, st, fmt.Sprintf("user%d@example.org", i), "pw", store.StateCaptured)
		inbox, err := st.MailboxByName(ctx, a.ID, "INBOX")
		if err != nil {
			b.Fatal(err)
		}
		inboxes = append(inboxes, inbox.ID)
	}
	stored := 0
	grow := func(to int) {
		for stored < to {
			batch := st.NewBatch()
			for range 1000 {
				msg := fmt.Sprintf("Message-ID: <%d@example.net>\r\nSubject: s\r\n\r\n%s\r\n", stored, strings.Repeat("x", 200))
				if err := batch.Add(ctx, store.NewMessage{MailboxID: inboxes[stored%accounts], InternalDate: time.Now()}, strings.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
				stored++
			}
			if _, err := batch.Commit(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	report := func() time.Duration {
		const n = 200
		start := time.Now()
		for range n {
			if _, err := Collect(ctx, st, Options{PerAccount: true}); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / n
	}
	for i := 0; i < b.N; i++ {
		grow(1000)
		small := report()
		grow(100000)
		large := report()
		grow(1000000)
		huge := report()
		fmt.Printf("status bench: one report over %d accounts: %.0f µs at 1,000 messages, %.0f µs at 100,000 (%.2fx), %.0f µs at 1,000,000 (%.2fx; target <= 1.5x)\n",
			accounts, small.Seconds()*1e6, large.Seconds()*1e6, float64(large)/float64(small), huge.Seconds()*1e6, float64(huge)/float64(small))
		b.ReportMetric(float64(large)/float64(small), "x-report-100k-vs-1k")
		b.ReportMetric(float64(huge)/float64(small), "x-report-1m-vs-1k")
	}
}
