package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailcapture/addresses"
	"mailcapture/front"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
	"mailcapture/storetest"
)

// BenchmarkSMTPAccept measures messages per second accepted and durably
// stored (250 after DATA), 10 parallel senders of 10 KB messages, for
// mailcapture's local route, its legacy route (spooled for the legacy
// server, with the relay queue running) and, as the peer, a Postfix on this
// machine taking the same load into its queue (delivering into Dovecot).
// Stores and queues live on the same scratch filesystem.
func BenchmarkSMTPAccept(b *testing.B) {
	const senders, perSender = 10, 300
	ctx := context.Background()
	scratch := scratchfs.Mount(b, 2048)
	d := legacytest.Start(b, legacytest.Options{})
	d.AddUser(b, "legacy@example.org", "pw")
	pf := legacytest.StartPostfix(b, legacytest.PostfixOptions{LMTPAddr: d.LMTPAddr, Domain: "example.org",
		Users: []string{"legacy@example.org"}, Dir: filepath.Join(scratch, "postfix")})
	st, err := store.Open(ctx, filepath.Join(scratch, "store"), store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.Account(b, st, "local@example.org", "pw", store.StateCaptured)

	legacy := Legacy{Endpoint: legacyclient.Endpoint{Address: pf.Addr, Timeout: time.Minute}, Protocol: "smtp", Hostname: "mx.example.org"}
	queue := &Queue{Store: st, Legacy: legacy}
	backend := &Backend{Store: st, Domains: []string{"example.org"}, Legacy: legacy, Hostname: "mx.example.org", Spooled: queue.Wake}
	srv := smtp.NewServer(backend)
	srv.Domain = "mx.example.org"
	srv.MaxMessageBytes = 50 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	// The same front end resolving through a table of 100,000 aliases
	// and the "+" delimiter.
	dir := benchDirectory(b, st, 100000)
	aliased := &Backend{Store: st, Domains: []string{"example.org"}, Directory: dir, Legacy: legacy, Hostname: "mx.example.org", Spooled: queue.Wake}
	asrv := smtp.NewServer(aliased)
	asrv.Domain, asrv.MaxMessageBytes = "mx.example.org", 50<<20
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go asrv.Serve(aln)
	defer asrv.Close()
	queueCtx, stopQueue := context.WithCancel(ctx)
	queueDone := make(chan struct{})
	go func() {
		queue.Run(queueCtx)
		close(queueDone)
	}()
	defer func() {
		stopQueue()
		<-queueDone
	}()
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 130)) // ~10 KB

	for i := 0; i < b.N; i++ {
		rate := func(addr, to string) float64 {
			start := time.Now()
			if err := sendLoad(addr, to, senders, perSender, body); err != nil {
				b.Fatal(err)
			}
			return float64(senders*perSender) / time.Since(start).Seconds()
		}
		postfix := rate(pf.Addr, "legacy@example.org")
		localRate := rate(ln.Addr().String(), "local@example.org")
		legacyRate := rate(ln.Addr().String(), "legacy@example.org")
		fmt.Printf("smtp bench: %d senders x %d messages of %d bytes: Postfix %.0f msg/s, mailcapture local route %.0f msg/s (%.2fx, target >= 1x), legacy route %.0f msg/s (%.2fx, target >= 0.8x)\n",
			senders, perSender, len(body), postfix, localRate, localRate/postfix, legacyRate, legacyRate/postfix)
		b.ReportMetric(localRate/postfix, "x-postfix-local")
		b.ReportMetric(legacyRate/postfix, "x-postfix-legacy")
		// Without and with the table, in turn (the disk's drift hits
		// both alike), to an alias of the local account.
		var plain, table float64
		for range 2 {
			plain += rate(ln.Addr().String(), "local@example.org") / 2
			table += rate(aln.Addr().String(), "alias77777+tag@example.org") / 2
		}
		perRcpt := resolveTime(b, dir, "alias77777+tag@example.org")
		fmt.Printf("smtp bench: local route with a %d-alias table: %.0f msg/s against %.0f without (%.2fx, target >= 0.95x); resolving one recipient through it: %.1f µs (target < 1000 µs)\n",
			dir.Table().Len(), table, plain, table/plain, perRcpt.Seconds()*1e6)
		b.ReportMetric(table/plain, "x-local-with-aliases")
		b.ReportMetric(perRcpt.Seconds()*1e6, "us-per-rcpt-resolution")
	}
}

// sendLoad sends n messages to rcpt over each of senders connections in
// parallel; every message must get its 250.
func sendLoad(addr, rcpt string, senders, n int, body []byte) error {
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for w := 0; w < senders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Hello("sender.example.net"); err != nil {
				errs <- err
				return
			}
			for i := 0; i < n; i++ {
				msg := fmt.Appendf(nil, "Message-ID: <bench-%d-%d-%d@example.net>\r\n", time.Now().UnixNano(), w, i)
				if err := sendOne(c, rcpt, append(msg, body...)); err != nil {
					errs <- fmt.Errorf("sender %d message %d: %w", w, i, err)
					return
				}
			}
			c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func sendOne(c *smtp.Client, rcpt string, msg []byte) error {
	if err := c.Mail("sender@example.net", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

// benchDirectory is a directory over st with n aliases, each to the
// local account, and the "+" delimiter.
func benchDirectory(b *testing.B, st *store.Store, n int) *addresses.Directory {
	b.Helper()
	var table strings.Builder
	for i := range n {
		fmt.Fprintf(&table, "alias%d@example.org local@example.org\n", i)
	}
	tbl, _, err := addresses.Parse(strings.NewReader(table.String()), "example.org")
	if err != nil {
		b.Fatal(err)
	}
	dir := &addresses.Directory{Naming: addresses.Naming{DefaultDomain: "example.org", Delimiters: "+"}, Domains: []string{"example.org"}, Store: st}
	dir.SetTable(tbl)
	return dir
}

// resolveTime is the mean time of one resolution of rcpt (alias table,
// delimiter, account lookup), over a thousand.
func resolveTime(b *testing.B, dir *addresses.Directory, rcpt string) time.Duration {
	b.Helper()
	const n = 1000
	start := time.Now()
	for range n {
		res, err := dir.Resolve(context.Background(), rcpt)
		if err != nil || len(res.Targets) != 1 || !res.Targets[0].Found {
			b.Fatalf("resolve %s: %+v %v", rcpt, res, err)
		}
	}
	return time.Since(start) / n
}

// BenchmarkSubmission measures the time per message of 10 users, each
// on its own connection, submitting 10 KB messages for another domain:
// through mailcapture's submission front end (which passes each command
// on the user's own session at the legacy submission server) against
// straight to that server, a Postfix with SASL through Dovecot relaying
// to a sink. Both paths use STARTTLS and one login per connection.
func BenchmarkSubmission(b *testing.B) {
	const senders, perSender = 10, 100
	d := legacytest.Start(b, legacytest.Options{TLS: true})
	for w := range senders {
		d.AddUser(b, fmt.Sprintf("user%d@example.org", w), "pw")
	}
	sink := legacytest.StartSink(b)
	scratch := scratchfs.Mount(b, 1024)
	pf := legacytest.StartPostfix(b, legacytest.PostfixOptions{LMTPAddr: d.LMTPAddr, Domain: "example.org", Dir: filepath.Join(scratch, "postfix"),
		Submission: &legacytest.PostfixSubmission{Auth: d, RelayHost: sink.Addr}})
	st := storetest.Open(b, filepath.Join(scratch, "store"))
	mx := &Backend{Store: st, Domains: []string{"example.org"}, Hostname: "mx.example.org"}
	sub := &SubmissionBackend{MX: mx, Router: &front.Router{Store: st, Mode: "shadow"}, MaxPerHour: 1 << 30,
		Legacy: legacyclient.Endpoint{Address: pf.SubmissionAddr, TLS: "starttls", TLSConfig: &tls.Config{RootCAs: d.CertPool, ServerName: "127.0.0.1"}, Timeout: time.Minute}}
	srv := smtp.NewServer(sub)
	srv.Domain = "mx.example.org"
	srv.MaxMessageBytes = 50 << 20
	srv.TLSConfig, _ = legacytest.SelfSignedTLS(b)
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 130)) // ~10 KB
	clientTLS := &tls.Config{InsecureSkipVerify: true}
	total := 0
	for i := 0; i < b.N; i++ {
		perMessage := func(addr string) time.Duration {
			start := time.Now()
			if err := submitLoad(addr, clientTLS, senders, perSender, body); err != nil {
				b.Fatal(err)
			}
			total += senders * perSender
			return time.Since(start) / (senders * perSender)
		}
		// In turn, each first once, so that warm-up and the disk's drift
		// hit both alike.
		var direct, through time.Duration
		direct += perMessage(pf.SubmissionAddr) / 2
		through += perMessage(ln.Addr().String()) / 2
		through += perMessage(ln.Addr().String()) / 2
		direct += perMessage(pf.SubmissionAddr) / 2
		sink.Wait(b, total)
		ratio := float64(through) / float64(direct)
		fmt.Printf("submission bench: %d users x %d messages of %d bytes to another domain: straight to the legacy submission server %.2f ms per message, through mailcapture %.2f ms (%.2fx, target <= 1.2x)\n",
			senders, perSender, len(body), direct.Seconds()*1000, through.Seconds()*1000, ratio)
		b.ReportMetric(ratio, "x-direct-time")
	}
}

// submitLoad has each of senders users log in (STARTTLS, AUTH PLAIN) and
// submit n messages to another domain; every message must get its 250.
func submitLoad(addr string, clientTLS *tls.Config, senders, n int, body []byte) error {
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for w := 0; w < senders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("user%d@example.org", w)
			c, err := smtp.DialStartTLS(addr, clientTLS)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", user, "pw")); err != nil {
				errs <- fmt.Errorf("%s: %w", user, err)
				return
			}
			for i := 0; i < n; i++ {
				msg := fmt.Appendf(nil, "From: %s\r\nMessage-ID: <submit-%d-%d-%d@example.org>\r\n", user, time.Now().UnixNano(), w, i)
				if err := c.SendMail(user, []string{"someone@example.net"}, bytes.NewReader(append(msg, body...))); err != nil {
					errs <- fmt.Errorf("%s message %d: %w", user, i, err)
					return
				}
			}
			c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// benchScript is a Sieve script of 50 rules of the kinds filters made
// in mail clients use (header, address, envelope, size, exists), of
// which bodyRules are body tests instead; none matches the benchmark's
// messages: every rule is evaluated for each.
func benchScript(bodyRules int) string {
	var b strings.Builder
	b.WriteString(`require ["fileinto", "envelope", "body", "imap4flags"];` + "\n")
	rule := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	for i := range bodyRules {
		rule(`if body :contains "unsubscribe-%d" { addflag "$List"; }`, i)
	}
	for i := range 15 - bodyRules {
		rule(`if header :contains "List-Id" "list-%d.example.net" { fileinto "Lists"; stop; }`, i)
	}
	for i := range 15 {
		rule(`if header :contains "Subject" "topic-%d" { fileinto "Folder%d"; stop; }`, i, i)
	}
	for i := range 10 {
		rule(`if address :domain :is "from" "list%d.example.net" { fileinto "Lists"; stop; }`, i)
	}
	for i := range 5 {
		rule(`if envelope :localpart :is "from" "owner-%d" { discard; stop; }`, i)
	}
	for i := range 5 {
		rule(`if anyof (size :over %dM, exists "X-Bench-%d") { fileinto "Big"; stop; }`, 10+i, i)
	}
	return b.String()
}

// BenchmarkSieveDelivery measures the local route's rate (10 senders of
// 10 KB messages, 250 after fsync) into an account with an active
// 50-rule Sieve script against one without, in turn, twice.
func BenchmarkSieveDelivery(b *testing.B) {
	const senders, perSender = 10, 300
	ctx := context.Background()
	scratch := scratchfs.Mount(b, 2048)
	st, err := store.Open(ctx, filepath.Join(scratch, "store"), store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.Account(b, st, "plain@example.org", "pw", store.StateCaptured)
	for name, bodyRules := range map[string]int{"filtered@example.org": 0, "body@example.org": 5} {
		acct := storetest.Account(b, st, name, "pw", store.StateCaptured)
		if err := st.ReplaceSieveScripts(ctx, acct.ID, []store.SieveScript{{Name: "rules", Script: []byte(benchScript(bodyRules)), Active: true}}, store.SieveCopied); err != nil {
			b.Fatal(err)
		}
	}
	backend := &Backend{Store: st, Domains: []string{"example.org"}, Hostname: "mx.example.org", Filters: &Filters{Store: st, Delimiter: "+"}}
	srv := smtp.NewServer(backend)
	srv.Domain, srv.MaxMessageBytes = "mx.example.org", 50<<20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 130)) // ~10 KB
	for i := 0; i < b.N; i++ {
		rate := func(to string) float64 {
			start := time.Now()
			if err := sendLoad(ln.Addr().String(), to, senders, perSender, body); err != nil {
				b.Fatal(err)
			}
			return float64(senders*perSender) / time.Since(start).Seconds()
		}
		var plain, script, withBody float64
		plain += rate("plain@example.org") / 2
		script += rate("filtered@example.org") / 2
		withBody += rate("body@example.org") / 2
		withBody += rate("body@example.org") / 2
		script += rate("filtered@example.org") / 2
		plain += rate("plain@example.org") / 2
		fmt.Printf("sieve bench: %d senders x %d messages of %d bytes, local route: %.0f msg/s with a 50-rule script (header, address, envelope, size, exists), %.0f without (time per message %.2fx, target <= 1.3x); with 5 of the 50 rules body tests %.0f msg/s (%.2fx)\n",
			senders, perSender, len(body), script, plain, plain/script, withBody, plain/withBody)
		b.ReportMetric(plain/script, "x-time-with-script")
		b.ReportMetric(plain/withBody, "x-time-with-body-rules")
	}
}
