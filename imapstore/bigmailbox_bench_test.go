package imapstore

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailcapture/capture"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
)

// BenchmarkBigMailbox puts one INBOX of 100,000 messages (flags and
// keywords set) in a private Dovecot, captures it into a store, and asks
// both servers the same questions in the same run, each on a session of
// its own with INBOX selected: the searches on flags, keywords, dates,
// sizes and UID sets (median of 5; the answers must be identical), and,
// after mailcapture is restarted on the same store, the first FETCH 1:*
// (FLAGS) of a new session against Dovecot's for a new session.
func BenchmarkBigMailbox(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	d := legacytest.Start(b, legacytest.Options{Dir: scratchfs.Mount(b, 4096)})
	d.AddUser(b, user, password)
	d.SeedInbox(b, user, legacytest.Generate(5, n, 20000))
	o := &oracle{d: d}
	c := o.dial(b)
	c.expect("OK", "SELECT INBOX")
	// Message i (1-based): \Seen unless i%3 == 0, \Flagged when i%17 == 0,
	// $Label1 when i%50 == 0.
	for _, set := range []struct {
		flags string
		every func(i int) bool
	}{
		{`\Seen`, func(i int) bool { return i%3 != 0 }},
		{`\Flagged`, func(i int) bool { return i%17 == 0 }},
		{`$Label1`, func(i int) bool { return i%50 == 0 }},
	} {
		var uids []int
		for i := 1; i <= n; i++ {
			if set.every(i) {
				uids = append(uids, i)
			}
		}
		for len(uids) > 0 {
			k := min(len(uids), 5000)
			c.expect("OK", "UID STORE %s +FLAGS.SILENT (%s)", uidList(uids[:k]), set.flags)
			uids = uids[k:]
		}
	}
	c.expect("OK", "LOGOUT")

	dir := filepath.Join(scratchfs.Mount(b, 4096), "store")
	st, err := store.Open(ctx, dir, store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
		b.Fatal(err)
	}
	e := &capture.Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: time.Minute}}
	if res, err := e.Pass(ctx, user, password); err != nil || res.Added != n {
		b.Fatalf("capture: %+v, %v", res, err)
	}
	acct, err := st.Account(ctx, user)
	if err != nil {
		b.Fatal(err)
	}
	l := serveLocal(b, st, acct)

	searches := []string{"UID SEARCH UNSEEN", "SEARCH FLAGGED", "SEARCH SINCE 1-Jan-2024", "SEARCH LARGER 10000",
		"SEARCH KEYWORD $Label1", "UID SEARCH UID 20000:30000 SEEN", "SEARCH NOT DELETED"}
	for i := 0; i < b.N; i++ {
		dc, lc := o.dial(b), l.dial(b)
		dc.expect("OK", "SELECT INBOX")
		lc.expect("OK", "SELECT INBOX")
		fmt.Printf("big mailbox bench: %d messages in INBOX, each server on a session of its own, median of 5:\n", n)
		worst := 0.0
		for _, q := range searches {
			dt, dAnswer := timeCommand(dc, q)
			lt, lAnswer := timeCommand(lc, q)
			if dAnswer != lAnswer {
				b.Fatalf("%s: mailcapture answered %.200q, Dovecot %.200q", q, lAnswer, dAnswer)
			}
			ratio := float64(lt) / float64(dt)
			worst = max(worst, ratio)
			fmt.Printf("  %-32s mailcapture %9v, Dovecot %9v: %.2fx (target <= 1.0x), %d matches\n", q,
				lt.Round(time.Microsecond), dt.Round(time.Microsecond), ratio, len(strings.Fields(lAnswer))-2)
		}
		b.ReportMetric(worst, "x-dovecot-worst-search")

		// A restart: the server and the store closed and opened again.
		l.stop()
		st, err := store.Open(ctx, dir, store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
		if err != nil {
			b.Fatal(err)
		}
		l = serveLocal(b, st, acct)
		start := time.Now()
		lc = l.dial(b)
		lc.expect("OK", "SELECT INBOX")
		lSelect := time.Since(start)
		lFetch := timeOnce(lc, "FETCH 1:* (FLAGS)", n)
		start = time.Now()
		dc = o.dial(b)
		dc.expect("OK", "SELECT INBOX")
		dSelect := time.Since(start)
		dFetch := timeOnce(dc, "FETCH 1:* (FLAGS)", n)
		fmt.Printf("  after a restart, new session: SELECT mailcapture %v, Dovecot %v; first FETCH 1:* (FLAGS) mailcapture %v, Dovecot %v: %.2fx (target <= 2x); both together %.2fx\n",
			lSelect.Round(time.Millisecond), dSelect.Round(time.Millisecond), lFetch.Round(time.Millisecond), dFetch.Round(time.Millisecond),
			float64(lFetch)/float64(dFetch), float64(lSelect+lFetch)/float64(dSelect+dFetch))
		b.ReportMetric(float64(lFetch)/float64(dFetch), "x-dovecot-first-fetch")
		b.ReportMetric(float64(lSelect+lFetch)/float64(dSelect+dFetch), "x-dovecot-select-and-fetch")
	}
}

// timeCommand runs cmd five times and returns the median time and the
// answer (the untagged SEARCH line, its numbers sorted).
func timeCommand(c *tclient, cmd string) (time.Duration, string) {
	var times []time.Duration
	answer := ""
	for range 5 {
		start := time.Now()
		c.expect("OK", "%s", cmd)
		times = append(times, time.Since(start))
		answer = sortedSearch(c.find(`^\* (E)?SEARCH`))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[2], answer
}

// timeOnce times one command and checks it answered for n messages.
func timeOnce(c *tclient, cmd string, n int) time.Duration {
	start := time.Now()
	lines := c.expect("OK", "%s", cmd)
	took := time.Since(start)
	if len(lines) < n {
		c.t.Fatalf("%s: %d untagged answers, want %d", cmd, len(lines), n)
	}
	return took
}

// sortedSearch gives the SEARCH answer with its numbers in order.
func sortedSearch(lines []string) string {
	if len(lines) != 1 {
		return fmt.Sprint(lines)
	}
	f := strings.Fields(lines[0])
	nums := f[2:]
	sort.Slice(nums, func(i, j int) bool {
		a, _ := strconv.Atoi(nums[i])
		b, _ := strconv.Atoi(nums[j])
		return a < b
	})
	return strings.Join(append(f[:2], nums...), " ")
}

// uidList writes UIDs as an IMAP sequence set, runs joined.
func uidList(uids []int) string {
	var b strings.Builder
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d:%d", uids[i], uids[j])
		} else {
			fmt.Fprintf(&b, "%d", uids[i])
		}
		i = j + 1
	}
	return b.String()
}
