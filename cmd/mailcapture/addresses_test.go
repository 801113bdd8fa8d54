package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// legacyAliases is the legacy MTA's virtual_alias_maps; mailcapture's
// alias table is the same without bobby@ (which `addresses suggest` must
// find in the legacy server's delivery headers).
const legacyAliases = `robert@example.org   bob@example.org
bobby@example.org    bob@example.org
team@example.org     bob@example.org, alice@example.org
`

// sendSMTP sends one message per recipient list with Python's smtplib and
// returns what each RCPT and DATA answered.
func sendSMTP(t *testing.T, addr string, messages map[string][]string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	var script strings.Builder
	fmt.Fprintf(&script, "import smtplib\ns = smtplib.SMTP(%q, %s, timeout=30)\ns.ehlo('sender.example.net')\n", host, port)
	var ids []string
	for id := range messages {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&script, "s.mail('a@example.net')\nok = False\n")
		for _, rcpt := range messages[id] {
			fmt.Fprintf(&script, "code = s.rcpt(%q)[0]\nprint(%q, 'RCPT', %q, code)\nok = ok or code == 250\n", rcpt, id, rcpt)
		}
		fmt.Fprintf(&script, "if ok:\n    print(%q, 'DATA', s.data('Message-ID: <%s@example.net>\\r\\nSubject: %s\\r\\n\\r\\nhello\\r\\n')[0])\n", id, id, id)
		fmt.Fprintf(&script, "s.rset()\n")
	}
	script.WriteString("s.quit()\n")
	out, err := exec.Command("python3", "-c", script.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	return string(out)
}

// localMessageIDs reads an account's local INBOX beside serve: the
// Message-IDs, in UID order.
func localMessageIDs(t *testing.T, dataDir, account string) []string {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acct, err := st.Account(ctx, account)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.MessageID)
	}
	return ids
}

// legacyMessageIDs reads a user's legacy INBOX at Dovecot.
func legacyMessageIDs(t *testing.T, d *legacytest.Dovecot, user, pass string) []string {
	t.Helper()
	var ids []string
	for _, m := range d.Snapshot(t, user, pass)["INBOX"].Messages {
		if m := regexp.MustCompile(`(?mi)^Message-ID: (<[^>]*>)`).FindSubmatch(m.Body); m != nil {
			ids = append(ids, string(m[1]))
		}
	}
	return ids
}

// waitLegacy waits (bounded) until a legacy INBOX holds n messages: the
// legacy MTA delivers in its own time.
func waitLegacy(t *testing.T, d *legacytest.Dovecot, user, pass string, n int) []string {
	t.Helper()
	for i := 0; ; i++ {
		ids := legacyMessageIDs(t, d, user, pass)
		if len(ids) >= n || i == 300 {
			return ids
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func count(ids []string, id string) int {
	n := 0
	for _, x := range ids {
		if x == id {
			n++
		}
	}
	return n
}

// TestEveryAddressReachesItsMailbox runs a domain set up as real ones
// are: a Dovecot that takes bare logins (auth_default_realm) and "+"
// addresses, behind a Postfix with virtual aliases that delivers into its
// Maildirs (so Delivered-To and X-Original-To are Postfix's own). The
// same alias table (less one alias) is mailcapture's addresses.file.
// Where each message lands is read from the mailboxes: before bob's
// cut-over, after it (alice still at the legacy server), after
// retirement with both legacy servers stopped — when nothing may connect
// to them any more.
func TestEveryAddressReachesItsMailbox(t *testing.T) {
	const pass = "addresses pass"
	d := legacytest.Start(t, legacytest.Options{DefaultRealm: "example.org", RecipientDelimiter: "+"})
	for _, u := range []string{"bob@example.org", "alice@example.org", "carol@example.org"} {
		d.AddUser(t, u, pass)
	}
	pf := legacytest.StartPostfix(t, legacytest.PostfixOptions{Domain: "example.org", Users: []string{"bob@example.org", "alice@example.org", "carol@example.org"},
		Aliases: legacyAliases, Maildirs: d, RecipientDelimiter: "+"})
	// Mail of the past, delivered by the legacy MTA: bob got some under
	// the alias mailcapture's table lacks.
	if out := sendSMTP(t, pf.Addr, map[string][]string{"seed-bobby": {"bobby@example.org"}, "seed-robert": {"robert@example.org"}}); strings.Count(out, " 250") != 4 {
		t.Fatalf("seeding through Postfix:\n%s", out)
	}
	if ids := waitLegacy(t, d, "bob@example.org", pass, 2); len(ids) != 2 {
		t.Fatalf("bob's legacy INBOX after seeding: %v", ids)
	}
	imapProxy := legacytest.StartProxy(t, d.IMAPAddr)
	smtpProxy := legacytest.StartProxy(t, pf.Addr)
	dir := t.TempDir()
	aliasFile := filepath.Join(dir, "virtual")
	mine := strings.Replace(legacyAliases, "bobby@example.org    bob@example.org\n", "", 1)
	if err := os.WriteFile(aliasFile, []byte(mine), 0o600); err != nil {
		t.Fatal(err)
	}
	path, dataDir := writeConfig(t, fmt.Sprintf("addresses: {file: %q}\n", aliasFile))
	environ := []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=" + imapProxy.Addr, "MAILCAPTURE_LEGACY__TIMEOUT=10s",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS=" + smtpProxy.Addr, "MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=smtp",
		"MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_SMTP__RETRY_MIN=1s",
	}
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	login := func(user string) error {
		t.Helper()
		c, err := imapclient.DialInsecure(imapAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(user, pass).Wait(); err != nil {
			return err
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			return err
		}
		return c.Logout().Wait()
	}

	// One account for bob, whatever form he logs in with.
	for _, form := range []string{"bob", "bob@EXAMPLE.org"} {
		if err := login(form); err != nil {
			t.Fatalf("login as %q: %v", form, err)
		}
	}
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=bob@example.org`))
	code, out, _ := runCLI(t, environ, "accounts", "--config", path, "list", "--json")
	var accounts []struct{ Name string }
	if code != 0 || json.Unmarshal([]byte(out), &accounts) != nil || len(accounts) != 1 || accounts[0].Name != "bob@example.org" {
		t.Fatalf("accounts after logins as bob and bob@EXAMPLE.org: exit %d %s", code, out)
	}

	// bob captured, alice not: every address of bob's is delivered here;
	// team@ reaches alice at the legacy server under her own address.
	out = sendSMTP(t, smtpAddr, map[string][]string{"m1": {"bob+lists@example.org"}, "m2": {"Robert@example.org"}, "m3": {"team@example.org"}})
	if strings.Count(out, " 250") != 6 {
		t.Fatalf("sending after bob's cut-over:\n%s", out)
	}
	local := localMessageIDs(t, dataDir, "bob@example.org")
	for _, id := range []string{"<m1@example.net>", "<m2@example.net>", "<m3@example.net>", "<seed-bobby@example.net>", "<seed-robert@example.net>"} {
		if count(local, id) != 1 {
			t.Fatalf("bob's local INBOX holds %s %d times: %v", id, count(local, id), local)
		}
	}
	if ids := waitLegacy(t, d, "alice@example.org", pass, 1); len(ids) != 1 || ids[0] != "<m3@example.net>" {
		t.Fatalf("alice's legacy INBOX: %v, want m3 once", ids)
	}
	if ids := legacyMessageIDs(t, d, "bob@example.org", pass); len(ids) != 2 {
		t.Fatalf("the legacy server gave bob more than the seeds: %v", ids)
	}

	// The alias the table lacks, found in Postfix's X-Original-To.
	code, out, _ = runCLI(t, environ, "addresses", "--config", path, "suggest", "--json")
	var suggested []suggestion
	if code != 0 || json.Unmarshal([]byte(out), &suggested) != nil || len(suggested) != 1 ||
		suggested[0].Address != "bobby@example.org" || suggested[0].Account != "bob@example.org" || suggested[0].Messages != 1 {
		t.Fatalf("addresses suggest: exit %d %s", code, out)
	}
	code, out, _ = runCLI(t, environ, "addresses", "--config", path, "check", "team@example.org")
	if code != 0 || !strings.Contains(out, "bob@example.org: account bob@example.org (captured), delivered here (local)") ||
		!strings.Contains(out, "alice@example.org: an account mailcapture does not know, relayed to the legacy server") {
		t.Fatalf("addresses check team@: exit %d\n%s", code, out)
	}

	// alice still gets mail at the legacy server: retirement refused.
	code, out, _ = runCLI(t, environ, "retire-legacy", "--config", path, "--check")
	if code == 0 || !strings.Contains(out, "address that reaches no mailbox here: alice@example.org: 1 messages") {
		t.Fatalf("retire-legacy --check with alice uncaptured: exit %d\n%s", code, out)
	}
	if code, out, errOut := runCLI(t, environ, "retire-legacy", "--config", path, "--yes"); code == 0 || !strings.Contains(errOut, "retirement refused") {
		t.Fatalf("retire-legacy with alice uncaptured: exit %d\n%s%s", code, out, errOut)
	}
	if err := login("alice"); err != nil {
		t.Fatal(err)
	}
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=alice@example.org`))
	code, out, _ = runCLI(t, environ, "retire-legacy", "--config", path, "--check")
	if code != 0 || !strings.Contains(out, "nothing would break without the legacy server") {
		t.Fatalf("retire-legacy --check with everyone captured: exit %d\n%s", code, out)
	}
	if code, out, errOut := runCLI(t, environ, "retire-legacy", "--config", path, "--yes"); code != 0 {
		t.Fatalf("retire-legacy: exit %d\n%s%s", code, out, errOut)
	}
	srv.waitFor(regexp.MustCompile(`msg="legacy server retired`))
	d.Stop()
	pf.Stop()
	imapBefore, smtpBefore := imapProxy.Accepted(), smtpProxy.Accepted()

	// After the retirement, with the legacy servers gone.
	out = sendSMTP(t, smtpAddr, map[string][]string{"m4": {"bob+x@example.org"}, "m5": {"robert@example.org"}, "m6": {"team@example.org"},
		"m7": {"carol@example.org"}, "m8": {"nobody@example.org"}})
	for _, want := range []string{`m4 RCPT bob+x@example.org 250`, `m5 RCPT robert@example.org 250`, `m6 RCPT team@example.org 250`,
		`m7 RCPT carol@example.org 550`, `m8 RCPT nobody@example.org 550`, "m4 DATA 250", "m5 DATA 250", "m6 DATA 250"} {
		if !strings.Contains(out, want) {
			t.Fatalf("after retirement, smtplib said:\n%s\nwant %q", out, want)
		}
	}
	local = localMessageIDs(t, dataDir, "bob@example.org")
	for _, id := range []string{"<m4@example.net>", "<m5@example.net>", "<m6@example.net>"} {
		if count(local, id) != 1 {
			t.Fatalf("bob's local INBOX holds %s %d times: %v", id, count(local, id), local)
		}
	}
	alice := localMessageIDs(t, dataDir, "alice@example.org")
	if count(alice, "<m3@example.net>") != 1 || count(alice, "<m6@example.net>") != 1 {
		t.Fatalf("alice's local INBOX: %v", alice)
	}
	if err := login("carol"); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("login of a never-captured account after retirement: %v", err)
	}
	if err := login("bob"); err != nil {
		t.Fatalf("bob's login after retirement: %v", err)
	}
	if imapProxy.Accepted() != imapBefore || smtpProxy.Accepted() != smtpBefore {
		t.Fatalf("connections to the retired legacy server: IMAP %d, SMTP %d", imapProxy.Accepted()-imapBefore, smtpProxy.Accepted()-smtpBefore)
	}
	srv.stop(t)
}

// TestAliasTableReload: serve reads addresses.file again when it changes
// and on SIGHUP; a table with a bad line is refused with its line number
// and the one in force stays; check-config reports the line under the
// key addresses.file.
func TestAliasTableReload(t *testing.T) {
	dir := t.TempDir()
	aliases := filepath.Join(dir, "virtual")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(aliases, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("old@example.org local@example.org\n")
	path, dataDir := writeConfig(t, fmt.Sprintf("addresses: {file: %q}\n", aliases))
	seedCapturedAccount(t, dataDir, "local@example.org")
	environ := []string{"MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS=127.0.0.1:1",
		"MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LEGACY__TIMEOUT=2s"}
	srv := startServe(t, path, environ)
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	rcpt := func(addr string) string {
		t.Helper()
		return sendSMTP(t, smtpAddr, map[string][]string{"probe": {addr}})
	}
	if out := rcpt("new@example.org"); !strings.Contains(out, "RCPT new@example.org 451") {
		t.Fatalf("an address the table lacks (the legacy server unreachable): %s", out)
	}
	write("old@example.org local@example.org\nnew@example.org local@example.org\n")
	srv.waitFor(regexp.MustCompile(`msg="alias table reloaded" file=\S+ entries=2`))
	if out := rcpt("new@example.org"); !strings.Contains(out, "RCPT new@example.org 250") || !strings.Contains(out, "DATA 250") {
		t.Fatalf("after the file changed: %s", out)
	}
	write("old@example.org local@example.org\nbroken@@example.org local@example.org\n")
	srv.waitFor(regexp.MustCompile(`level=ERROR msg="addresses.file was refused; the alias table in force stays".*line 2`))
	if out := rcpt("new@example.org"); !strings.Contains(out, "RCPT new@example.org 250") {
		t.Fatalf("after a bad table: %s", out)
	}
	code, _, errOut := runCLI(t, environ, "check-config", "--config", path)
	if code == 0 || !strings.Contains(errOut, "addresses.file:") || !strings.Contains(errOut, `line 2: "broken@@example.org" is not an address`) {
		t.Fatalf("check-config with a bad alias table: exit %d\n%s", code, errOut)
	}
	// A change the file's size and time do not show: only SIGHUP reads it.
	write("old@example.org local@example.org\nnew@example.org local@example.org\nthird@example.org local@example.org\n")
	srv.waitFor(regexp.MustCompile(`msg="alias table reloaded" file=\S+ entries=3`))
	if out := rcpt("first@example.org"); !strings.Contains(out, "RCPT first@example.org 451") {
		t.Fatalf("before the SIGHUP: %s", out)
	}
	stamp := mustStat(t, aliases).ModTime()
	write("old@example.org local@example.org\nnew@example.org local@example.org\nfirst@example.org local@example.org\n")
	if err := os.Chtimes(aliases, stamp, stamp); err != nil {
		t.Fatal(err)
	}
	srv.reload <- struct{}{}
	srv.waitFor(regexp.MustCompile(`msg="alias table reloaded" file=\S+ entries=3 trigger=signal`))
	if out := rcpt("first@example.org"); !strings.Contains(out, "RCPT first@example.org 250") {
		t.Fatalf("after SIGHUP: %s", out)
	}
	srv.stop(t)
}

func mustStat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestAccountsOfOneMailboxAreMerged: a store from before canonical names
// holds "bob" and "bob@example.org"; accounts list flags them, accounts
// merge makes them one (refused while serve runs), and nothing either
// held is lost.
func TestAccountsOfOneMailboxAreMerged(t *testing.T) {
	path, dataDir := writeConfig(t, "")
	seedCapturedAccount(t, dataDir, "bob")
	seedCapturedAccount(t, dataDir, "bob@example.org")
	seedCapturedAccount(t, dataDir, "alice@example.org")
	ctx := context.Background()
	st, err := store.Open(ctx, dataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"bob": "Message-ID: <typed@example.net>\r\n\r\nx\r\n", "bob@example.org": "Message-ID: <full@example.net>\r\n\r\ny\r\n"} {
		acct, _ := st.Account(ctx, name)
		inbox, _ := st.MailboxByName(ctx, acct.ID, "INBOX")
		if _, err := st.Append(ctx, inbox.ID, strings.NewReader(body), nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	code, out, _ := runCLI(t, nil, "accounts", "--config", path, "list")
	if code != 0 || !strings.Contains(out, "one mailbox, 2 accounts: bob, bob@example.org (merge with: mailcapture accounts merge bob bob@example.org)") {
		t.Fatalf("accounts list: exit %d\n%s", code, out)
	}
	srv := startServe(t, path, nil)
	srv.waitFor(regexp.MustCompile(`msg="mailcapture running"`))
	if code, _, errOut := runCLI(t, nil, "accounts", "--config", path, "merge", "bob", "bob@example.org", "--yes"); code == 0 || !strings.Contains(errOut, "stop serve first") {
		t.Fatalf("merge while serve runs: exit %d %s", code, errOut)
	}
	srv.stop(t)
	if code, out, errOut := runCLI(t, nil, "accounts", "--config", path, "merge", "bob", "bob@example.org", "--yes"); code != 0 || !strings.Contains(out, "1 messages moved") {
		t.Fatalf("merge: exit %d %s %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, nil, "accounts", "--config", path, "list")
	if code != 0 || strings.Contains(out, "one mailbox") || !strings.Contains(out, "2 accounts") {
		t.Fatalf("accounts list after the merge: exit %d\n%s", code, out)
	}
	ids := localMessageIDs(t, dataDir, "bob@example.org")
	if len(ids) != 2 || count(ids, "<typed@example.net>") != 1 || count(ids, "<full@example.net>") != 1 {
		t.Fatalf("bob's INBOX after the merge: %v", ids)
	}
}

// TestRetirementCheckLooksIntoLegacyMailboxes: with a legacy master
// user, retire-legacy --check finds mail that reached a captured
// account's legacy mailbox after its last follow sync, and lets the
// retirement go once a login copied it.
func TestRetirementCheckLooksIntoLegacyMailboxes(t *testing.T) {
	const user, pass = "late@example.org", "late pass"
	d := legacytest.Start(t, legacytest.Options{MasterUser: "admin", MasterPassword: "master pw"})
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(41, 3, 2000)}})
	path, _, environ := bulkConfig(t, d)
	masterPW := filepath.Join(t.TempDir(), "master.pw")
	if err := os.WriteFile(masterPW, []byte("master pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LEGACY__MASTER__USER=admin", "MAILCAPTURE_LEGACY__MASTER__PASSWORD_FILE="+masterPW)
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	captureByLogin(t, srv, imapAddr, user, pass)
	if code, out, _ := runCLI(t, environ, "retire-legacy", "--config", path, "--check"); code != 0 || !strings.Contains(out, "nothing would break") {
		t.Fatalf("retire-legacy --check after the capture: exit %d\n%s", code, out)
	}
	// Mail reaches the legacy mailbox after the cut-over (an old MX).
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(42, 1, 2000)}})
	code, out, _ := runCLI(t, environ, "retire-legacy", "--config", path, "--check")
	if code == 0 || !strings.Contains(out, "captured account with legacy mail no follow sync copied: late@example.org (INBOX: up to 1)") {
		t.Fatalf("retire-legacy --check with legacy mail not followed: exit %d\n%s", code, out)
	}
	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.waitFor(regexp.MustCompile(`msg="follow sync copied new legacy mail" account=late@example.org messages=1`))
	if code, out, _ := runCLI(t, environ, "retire-legacy", "--config", path, "--check"); code != 0 || !strings.Contains(out, "nothing would break") {
		t.Fatalf("retire-legacy --check after the follow sync: exit %d\n%s", code, out)
	}
	srv.stop(t)
}
