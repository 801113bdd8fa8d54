package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/pop3"
)

// TestServeProxiesAndCaptures runs serve with IMAP and POP3 listeners in
// front of a real Dovecot: a user's first IMAP login is served by the
// legacy server and starts the account's capture, which converges; POP3
// logins are proxied too.
func TestServeProxiesAndCaptures(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "serve@example.org", "serve pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(80, 15, 8000)}, {Name: "Sent", Messages: legacytest.Generate(81, 5, 8000)}})
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__POP3=127.0.0.1:0",
		"MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none")

	pr, pw := io.Pipe()
	env := &environment{stdout: io.Discard, stderr: pw, environ: environ}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, env, []string{"serve", "--config", path})
		pw.Close()
	}()
	events := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			events <- sc.Text()
		}
		close(events)
	}()
	waitFor := func(re *regexp.Regexp) []string {
		t.Helper()
		timeout := time.After(60 * time.Second)
		for {
			select {
			case line, ok := <-events:
				if !ok {
					t.Fatalf("serve ended before logging %s", re)
				}
				if m := re.FindStringSubmatch(line); m != nil {
					return m
				}
			case <-timeout:
				t.Fatalf("serve did not log %s within 60s", re)
			}
		}
	}
	imapAddr := waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	pop3Addr := waitFor(regexp.MustCompile(`msg=listening key=listen.pop3 addr=(\S+)`))[1]
	smtpAddr := waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]

	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 15 {
		t.Fatalf("SELECT through serve: %+v %v", sel, err)
	}
	c.Logout().Wait()
	c.Close()
	waitFor(regexp.MustCompile(`msg="capture converged and verified" account=serve@example.org`))
	waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=serve@example.org`))

	code, out, errOut := runCLI(t, environ, "status", "--config", path, "--json")
	var report struct {
		Accounts map[string]int
		Stored   struct{ Messages int }
	}
	if code != 0 || json.Unmarshal([]byte(out), &report) != nil || report.Accounts["captured"] != 1 || report.Stored.Messages != 20 {
		t.Fatalf("status after the cut-over: exit %d %s %s", code, out, errOut)
	}

	// Both protocols are now served from the store.
	pc, err := pop3.Dial(context.Background(), pop3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	if n, _, err := pc.Stat(); err != nil || n != 15 {
		t.Fatalf("POP3 STAT through serve: %d %v", n, err)
	}
	pc.Quit()
	c2, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(regexp.MustCompile(`msg="imap login" .*route=local`))
	if sel, err := c2.Select("Sent", nil).Wait(); err != nil || sel.NumMessages != 5 {
		t.Fatalf("SELECT Sent served locally: %+v %v", sel, err)
	}
	// New mail for the captured account is delivered into the store.
	host, port, _ := net.SplitHostPort(smtpAddr)
	script := fmt.Sprintf(`
import smtplib
s = smtplib.SMTP(%q, %s, timeout=30)
s.sendmail("a@example.net", [%q], "Message-ID: <after-cutover@example.net>\r\nSubject: new\r\n\r\nhello\r\n")
s.quit()
`, host, port, user)
	if out, err := exec.Command("python3", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	if sel, err := c2.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 16 {
		t.Fatalf("INBOX after SMTP delivery: %+v %v", sel, err)
	}
	c2.Logout().Wait()
	c2.Close()

	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	for range events {
	}
}
