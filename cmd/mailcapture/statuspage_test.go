package main

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/pop3"
)

// TestStatusPageInChromium loads the status page in headless Chromium
// while one account is captured and another's capture is failing (its
// user came in over POP3; the legacy IMAP server, which captures use,
// went down), and checks what the page shows: totals, progress, both
// accounts with their state, the failing one's error, and the search.
func TestStatusPageInChromium(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const done, stuck, pass = "done@example.org", "stuck@example.org", "page pass"
	d.AddUser(t, done, pass)
	d.AddUser(t, stuck, pass)
	d.Populate(t, done, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(98, 20, 3000)}})
	d.Populate(t, stuck, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(99, 7, 3000)}})
	imapProxy := legacytest.StartProxy(t, d.IMAPAddr)
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LEGACY__IMAP__ADDRESS="+imapProxy.Addr, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0",
		"MAILCAPTURE_LISTEN__POP3=127.0.0.1:0", "MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0")
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	pop3Addr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.pop3 addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]

	captureByLogin(t, srv, imapAddr, done, pass)
	imapProxy.SetDown(true)
	pc, err := pop3.Dial(context.Background(), pop3Addr, pop3.DialOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Login(stuck, pass); err != nil {
		t.Fatalf("POP3 login (proxied): %v", err)
	}
	pc.Quit()
	srv.waitFor(regexp.MustCompile(`account=` + regexp.QuoteMeta(stuck) + `.*(connection refused|EOF|connect)`))

	page := chromiumDOM(t, "http://"+httpAddr+"/status")
	for _, want := range []string{
		`<div class="value" id="accounts">2</div>`,
		"1 capturing · 0 cutover · 1 captured",
		`<tr data-account="done@example.org"><td>done@example.org</td><td class="state-captured">captured</td><td class="num">20</td><td class="num">20</td>`,
		`<tr data-account="stuck@example.org"><td>stuck@example.org</td><td class="state-capturing">capturing</td>`,
		`id="messages-bar" style="width: `,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if !regexp.MustCompile(`data-account="stuck@example.org">.*<td class="error">[^<]*(refused|connect|EOF)[^<]*</td>`).MatchString(page) {
		t.Errorf("the failing capture's error is not shown")
	}
	if t.Failed() {
		t.Logf("page:\n%s", page)
	}
	filtered := chromiumDOM(t, "http://"+httpAddr+"/status?q=stuck")
	if !strings.Contains(filtered, `data-account="stuck@example.org"`) || strings.Contains(filtered, `data-account="done@example.org"`) {
		t.Errorf("the search for %q did not keep only that account", "stuck")
	}
	srv.stop(t)
}

// chromiumDOM loads url in headless Chromium, lets its scripts run, and
// returns the resulting DOM.
func chromiumDOM(t *testing.T, url string) string {
	t.Helper()
	out, err := exec.Command("chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=4000", "--dump-dom", url).Output()
	if err != nil {
		t.Fatalf("chromium (Debian package chromium): %v", err)
	}
	return string(out)
}
