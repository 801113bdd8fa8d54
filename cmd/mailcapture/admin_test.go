package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/cutover"
	"mailcapture/legacytest"
	"mailcapture/status"
	"mailcapture/store"
)

// TestAdminCommands: beside a running serve, `accounts list|show` read the
// store, `cutover` forces an account over (serve carries it out), and
// `retire-legacy` ends the password checks at the legacy server.
func TestAdminCommands(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "forced@example.org", "forced pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(97, 5, 2000)}})
	path, dataDir, environ := bulkConfig(t, d)
	st, err := store.Open(context.Background(), dataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Known, never logged into since: nothing captures it.
	if _, err := st.CreateAccount(context.Background(), user, pass, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	st.Close()
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0")
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]

	code, out, errOut := runCLI(t, environ, "accounts", "--config", path, "list", "--json")
	var rows []status.Account
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0].State != store.StateCapturing {
		t.Fatalf("accounts list: exit %d %s %s", code, out, errOut)
	}
	for args, want := range map[string]string{
		"cutover":                          "name one account",
		"cutover nobody@example.org --yes": `no account "nobody@example.org"`,
		"cutover " + user:                  "confirm with --yes",
		"accounts show":                    "say list, or show NAME",
		"accounts frob":                    "say list, or show NAME",
	} {
		code, _, errOut := runCLI(t, environ, append([]string{strings.Fields(args)[0], "--config", path}, strings.Fields(args)[1:]...)...)
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d %q, want %q", args, code, errOut, want)
		}
	}
	if code, out, errOut := runCLI(t, environ, "cutover", "--config", path, user, "--yes"); code != 0 {
		t.Fatalf("cutover: exit %d %s %s", code, out, errOut)
	}
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=` + regexp.QuoteMeta(user)))
	code, out, errOut = runCLI(t, environ, "accounts", "--config", path, "show", user, "--json")
	var detail accountDetail
	if code != 0 || json.Unmarshal([]byte(out), &detail) != nil || detail.State != store.StateCaptured || len(detail.Folders) != 1 || detail.Folders[0].Name != "INBOX" {
		t.Fatalf("accounts show after the forced cut-over: exit %d %s %s", code, out, errOut)
	}
	if code, out, _ := runCLI(t, environ, "accounts", "--config", path, "show", user); code != 0 || !strings.Contains(out, "state:       captured") {
		t.Fatalf("accounts show (text): exit %d\n%s", code, out)
	}
	login := func(password string) error {
		c, err := imapclient.DialInsecure(imapAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.Login(user, password).Wait()
	}
	if err := login(pass); err != nil {
		t.Fatalf("local login after the forced cut-over: %v", err)
	}
	// Retired: a password changed at the legacy server is not taken over
	// any more.
	if code, out, errOut := runCLI(t, environ, "retire-legacy", "--config", path, "--yes"); code != 0 {
		t.Fatalf("retire-legacy: exit %d %s %s", code, out, errOut)
	}
	srv.waitFor(regexp.MustCompile(`msg="legacy server retired`))
	d.ChangePassword(t, user, "changed after retirement")
	if err := login("changed after retirement"); err == nil {
		t.Fatal("a password checked at the retired legacy server was accepted")
	}
	if code, out, _ := runCLI(t, environ, "retire-legacy", "--config", path, "--yes"); code != 0 || !strings.Contains(out, "was retired on") {
		t.Fatalf("retire-legacy again: exit %d %s", code, out)
	}
	// Export the account while serve runs.
	out = t.TempDir()
	if code, stdout, errOut := runCLI(t, environ, "export", "--config", path, "--maildir", out, "--account", user); code != 0 ||
		!strings.Contains(stdout, "exported 1 accounts, 1 folders") {
		t.Fatalf("export: exit %d %s %s", code, stdout, errOut)
	}
	if code, _, errOut := runCLI(t, environ, "export", "--config", path); code != 2 || !strings.Contains(errOut, "--maildir DIR is required") {
		t.Fatalf("export without --maildir: exit %d %s", code, errOut)
	}
	srv.stop(t)
}

// TestInterruptedCutoverRecovers: an account left in cutover by a stop in
// the middle of its cut-over is back to capturing when serve starts (the
// legacy server still serves it; its next convergence cuts it over).
func TestInterruptedCutoverRecovers(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	path, dataDir, environ := bulkConfig(t, d)
	st, err := store.Open(context.Background(), dataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const user = "interrupted@example.org"
	st.CreateAccount(context.Background(), user, "pw", store.StateCapturing)
	if err := st.Transition(context.Background(), user, store.StateCapturing, store.StateCutover); err != nil {
		t.Fatal(err)
	}
	st.Close()
	srv := startServe(t, path, environ)
	srv.waitFor(regexp.MustCompile(`msg="a stop interrupted this account's cut-over: back to capturing" account=` + regexp.QuoteMeta(user)))
	srv.stop(t)
	code, out, errOut := runCLI(t, environ, "accounts", "--config", path, "show", user, "--json")
	var detail accountDetail
	if code != 0 || json.Unmarshal([]byte(out), &detail) != nil || detail.State != store.StateCapturing {
		t.Fatalf("after the restart: exit %d %s %s", code, out, errOut)
	}
}

// TestStrandedHeldMailReleasedAtStart: a stop between the end of a
// cut-over and the release of what it held leaves held mail for a
// captured account; the next start delivers it into the INBOX once.
func TestStrandedHeldMailReleasedAtStart(t *testing.T) {
	ctx := context.Background()
	_, dataDir := writeConfig(t, "")
	seedCapturedAccount(t, dataDir, "held@example.org")
	st, err := store.Open(ctx, dataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acct, err := st.Account(ctx, "held@example.org")
	if err != nil {
		t.Fatal(err)
	}
	body := "Message-ID: <stranded@example.net>\r\nSubject: held\r\n\r\nhello\r\n"
	if _, err := st.Enqueue(ctx, store.RouteHold, acct.ID, store.Envelope{From: "a@example.net", To: []string{acct.Name}}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := (&cutover.Cutover{Store: st, Log: slog.New(slog.DiscardHandler)}).Recover(ctx); err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil || len(msgs) != 1 || msgs[0].MessageID != "<stranded@example.net>" {
		t.Fatalf("INBOX after the start: %d messages (%v)", len(msgs), err)
	}
	if n, _, _ := st.SpoolStats(ctx); n != 0 {
		t.Fatalf("spool holds %d messages after the start", n)
	}
}
