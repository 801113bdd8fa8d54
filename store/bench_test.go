package store

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/scratchfs"
)

// benchMessages returns n messages with sizes from 1 KB to 300 KB, drawn
// log-normally around a 5 KB median (the shape of real mailboxes: mostly
// small, a tail of attachments).
func benchMessages(n int) [][]byte {
	r := rand.New(rand.NewPCG(42, 42))
	filler := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog 0123456789.\r\n"), 6000)
	out := make([][]byte, n)
	for i := range out {
		size := int(math.Exp(math.Log(5000) + 1.1*r.NormFloat64()))
		size = min(max(size, 1024), 300*1024)
		var b bytes.Buffer
		fmt.Fprintf(&b, "From: sender%d@example.net\r\nTo: user@example.org\r\nSubject: benchmark message %d\r\n"+
			"Message-ID: <%d@bench.example>\r\nDate: Mon, 2 Jan 2006 15:04:05 -0700\r\n"+
			"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\nContent-Type: text/plain\r\n\r\n", i, i, i, i, i)
		closing := fmt.Sprintf("\r\n--b%d--\r\n", i)
		if body := size - b.Len() - len(closing); body > 0 {
			b.Write(filler[:body])
		}
		b.WriteString(closing)
		out[i] = b.Bytes()
	}
	return out
}

// BenchmarkStoreInsert20k inserts 20,000 messages with durability on (one
// syncfs per batch of bodies, SQLite synchronous=FULL) from two producers,
// as a capture with two legacy connections does. Each iteration makes three
// timed runs into fresh stores and reports the median.
func BenchmarkStoreInsert20k(b *testing.B) {
	const total, runs = 20000, 3
	msgs := benchMessages(total)
	var bytesTotal int64
	sizes := make([]int, len(msgs))
	for i, m := range msgs {
		bytesTotal += int64(len(m))
		sizes[i] = len(m)
	}
	sort.Ints(sizes)
	fmt.Printf("store insert: %d messages, %.1f MB, sizes min %d B, median %d B, max %d B\n",
		total, float64(bytesTotal)/1e6, sizes[0], sizes[total/2], sizes[total-1])
	// The stores live on a fresh journaled ext4 (see scratchfs) and are
	// removed only at the end.
	scratch := scratchfs.Mount(b, 2048)
	var medians []float64
	for i := 0; i < b.N; i++ {
		var times []float64
		for r := 0; r < runs; r++ {
			secs := insertRun(b, scratch, i*runs+r, msgs, bytesTotal)
			times = append(times, secs)
			fmt.Printf("store insert run %d: %.2fs, %.0f messages/s, %.1f MB/s\n",
				r+1, secs, total/secs, float64(bytesTotal)/1e6/secs)
		}
		sort.Float64s(times)
		medians = append(medians, times[runs/2])
	}
	sort.Float64s(medians)
	secs := medians[len(medians)/2]
	b.ReportMetric(total/secs, "msgs/s")
	b.ReportMetric(float64(bytesTotal)/1e6/secs, "MB/s")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("store insert median: %.0f messages/s, %.1f MB/s (target: 10000 messages/s)\n",
		total/secs, float64(bytesTotal)/1e6/secs)
}

// insertRun stores msgs into a fresh store under scratch with two
// producers and returns the seconds taken.
func insertRun(b *testing.B, scratch string, run int, msgs [][]byte, bytesTotal int64) float64 {
	const batchSize, producers = 500, 2
	total := len(msgs)
	b.StopTimer()
	defer b.StopTimer()
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(scratch, fmt.Sprintf("run-%d", run)), Options{Hash: testHash})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	acct, _ := s.CreateAccount(ctx, "bench@example.org", "pw", StateCapturing)
	boxes := make([]Mailbox, producers)
	for p := range boxes {
		boxes[p], _ = s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: fmt.Sprintf("Folder%d", p), UIDValidity: 7})
	}
	// Start from a quiet disk: flush what earlier work left dirty, so the
	// timed part pays only for its own writes.
	if err := s.syncBodies(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for lo := p * batchSize; lo < total; lo += producers * batchSize {
				batch := s.NewBatch()
				for j := lo; j < min(lo+batchSize, total); j++ {
					uid := uint32(j + 1)
					if err := batch.Add(ctx, NewMessage{MailboxID: boxes[p].ID, UID: uid, LegacyUID: uid, Flags: []string{`\Seen`}}, bytes.NewReader(msgs[j])); err != nil {
						batch.Abort()
						errs <- err
						return
					}
				}
				if _, err := batch.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(p)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	p, _ := s.AccountProgress(ctx, acct.ID)
	if p.Messages != int64(total) || p.Bytes != bytesTotal {
		b.Fatalf("stored %d messages / %d bytes, want %d / %d", p.Messages, p.Bytes, total, bytesTotal)
	}
	return secs
}

// BenchmarkPOP3UIDLMapping measures recording the POP3 UIDLs of a
// 100,000-message INBOX (what a capture with a legacy POP3 server does
// after the IMAP copy) against storing those messages, in batches of
// 1,000, in the same run.
func BenchmarkPOP3UIDLMapping(b *testing.B) {
	ctx := context.Background()
	const n = 100000
	for i := 0; i < b.N; i++ {
		s, err := Open(ctx, b.TempDir(), Options{Hash: HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
		if err != nil {
			b.Fatal(err)
		}
		acct, err := s.CreateAccount(ctx, "u@example.org", "pw", StateCapturing)
		if err != nil {
			b.Fatal(err)
		}
		mb, err := s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "INBOX", UIDValidity: 1})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for uid := 0; uid < n; {
			batch := s.NewBatch()
			for range 1000 {
				uid++
				if err := batch.Add(ctx, NewMessage{MailboxID: mb.ID, UID: uint32(uid), LegacyUID: uint32(uid), InternalDate: time.Now()},
					strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := batch.Commit(ctx); err != nil {
				b.Fatal(err)
			}
		}
		stored := time.Since(start)
		uidls := make(map[uint32]string, n)
		for uid := 1; uid <= n; uid++ {
			uidls[uint32(uid)] = fmt.Sprintf("%08X%08X", uid, 1)
		}
		start = time.Now()
		if err := s.SetPOP3UIDLs(ctx, mb.ID, uidls); err != nil {
			b.Fatal(err)
		}
		mapped := time.Since(start)
		fmt.Printf("pop3 uidl bench: %d UIDLs recorded in %.2f s; storing the messages took %.2f s (%.2fx)\n", n, mapped.Seconds(), stored.Seconds(), mapped.Seconds()/stored.Seconds())
		b.ReportMetric(mapped.Seconds()/stored.Seconds(), "x-store-time")
		s.Close()
	}
}
