package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/scratchfs"
)

// BenchmarkBulkCapture200x200 runs `mailcapture capture --csv` over 200
// accounts of 200 messages each (about 1.8 MB an account) in a private
// Dovecot, with the configuration's defaults (4 accounts at once, the
// default argon2id cost for the CSV passwords), once with IMAP alone and
// once with the legacy POP3 server configured too (its UIDLs mapped). The
// reference, measured in the same run over the same mailboxes: the raw
// read, 4 accounts at once, each one connection reading every body
// without parsing it. It also counts the legacy logins each account cost.
func BenchmarkBulkCapture200x200(b *testing.B) {
	const accounts, perAccount = 200, 200
	// The store and the legacy server each get a fresh filesystem of
	// their own, as on two machines: the store's syncs flush nothing of
	// Dovecot's.
	scratch := scratchfs.Mount(b, 4096)
	d := legacytest.Start(b, legacytest.Options{Dir: scratchfs.Mount(b, 2048)})
	var names []string
	var csv bytes.Buffer
	csv.WriteString("account,password\n")
	var totalBytes int64
	for i := range accounts {
		name := fmt.Sprintf("user%03d@example.org", i)
		pw := "pw-" + name
		d.AddUser(b, name, pw)
		msgs := legacytest.Generate(uint64(1000+i), perAccount, 70000)
		for _, m := range msgs {
			totalBytes += int64(len(m.Body))
		}
		d.SeedInbox(b, name, msgs)
		names = append(names, name)
		fmt.Fprintf(&csv, "%s,%s\n", name, pw)
	}
	csvPath := filepath.Join(scratch, "accounts.csv")
	if err := os.WriteFile(csvPath, csv.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	// A first read gives every message its UID and Dovecot its indexes,
	// so no timed part pays for them.
	if err := readAll(d, names); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("bulk bench: %d accounts x %d messages, %.0f MB\n", accounts, perAccount, float64(totalBytes)/1e6)
	for i := 0; i < b.N; i++ {
		raw := scratchfs.Timed(b, func() error { return readAll(d, names) })
		var took, hashing [2]time.Duration
		var logins [2][2]int
		for j, pop3 := range []bool{false, true} {
			imap0, pop0 := d.Logins(b, "imap"), d.Logins(b, "pop3")
			took[j] = scratchfs.Timed(b, func() error {
				var err error
				hashing[j], err = bulkCapture(filepath.Join(scratch, fmt.Sprintf("run-%d-%d", i, j)), d, csvPath, pop3)
				return err
			})
			took[j] -= hashing[j]
			logins[j] = [2]int{d.Logins(b, "imap") - imap0, d.Logins(b, "pop3") - pop0}
		}
		msgs := float64(accounts * perAccount)
		fmt.Printf("bulk bench: raw read (4 at once) %.2fs, %.0f msg/s\n", raw.Seconds(), msgs/raw.Seconds())
		for j, what := range []string{"IMAP only", "IMAP and POP3"} {
			fmt.Printf("bulk bench: mailcapture, %s: copied and verified in %.2fs, %.0f msg/s, %.2fx the raw read (target <= 2x); then %d passwords hashed in %.2fs; legacy logins per account: %.2f IMAP, %.2f POP3\n",
				what, took[j].Seconds(), msgs/took[j].Seconds(), took[j].Seconds()/raw.Seconds(), accounts, hashing[j].Seconds(),
				float64(logins[j][0])/accounts, float64(logins[j][1])/accounts)
		}
		b.ReportMetric(took[0].Seconds()/raw.Seconds(), "x-raw-imap")
		b.ReportMetric(took[1].Seconds()/raw.Seconds(), "x-raw-pop3")
	}
}

// readAll raw-reads every account's INBOX, 4 accounts at once.
func readAll(d *legacytest.Dovecot, names []string) error {
	work := make(chan string)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if _, err := legacytest.RawRead(d.IMAPAddr, name, "pw-"+name, []string{"INBOX"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

// bulkCapture runs `mailcapture capture --csv` into a fresh data
// directory, checks that it captured every account, and returns how long
// the command said the hashing of the passwords took.
func bulkCapture(dir string, d *legacytest.Dovecot, csvPath string, pop3 bool) (time.Duration, error) {
	config := fmt.Sprintf("data_dir: %s\ndomains: [example.org]\nlegacy:\n  imap: {address: %q, tls: none}\n", filepath.Join(dir, "data"), d.IMAPAddr)
	if pop3 {
		config += fmt.Sprintf("  pop3: {address: %q, tls: none}\n", d.POP3Addr)
	}
	config += "listen:\n  http: \"127.0.0.1:0\"\n"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	path := filepath.Join(dir, "mailcapture.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return 0, err
	}
	var out, errOut bytes.Buffer
	env := &environment{stdout: &out, stderr: &errOut}
	if code := run(context.Background(), env, []string{"capture", "--config", path, "--csv", csvPath}); code != 0 {
		return 0, fmt.Errorf("capture exited %d\n%s\n%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "200 of 200 accounts captured and verified, 40000 messages stored") {
		return 0, fmt.Errorf("capture did not capture everything:\n%s", out.String())
	}
	var seconds float64
	if _, after, ok := strings.Cut(out.String(), "passwords of 200 accounts hashed in "); ok {
		fmt.Sscanf(after, "%fs", &seconds)
	} else {
		return 0, fmt.Errorf("capture did not hash the 200 passwords:\n%s", out.String())
	}
	return time.Duration(seconds * float64(time.Second)), nil
}
