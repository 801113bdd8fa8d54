package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/store"
)

// TestVaultResumesAndFollows: with the credential vault on, a capture
// that could not finish resumes after a restart without any login, a
// captured account is followed without logins, the password is in no file
// in plain text, and retire-legacy wipes the vault.
func TestVaultResumesAndFollows(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "vaulted@example.org", "vaulted pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(101, 6, 3000)}})
	imapProxy := legacytest.StartProxy(t, d.IMAPAddr)
	path, dataDir, environ := bulkConfig(t, d)
	key := filepath.Join(t.TempDir(), "vault.key")
	os.WriteFile(key, []byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"), 0o600)
	environ = append(environ, "MAILCAPTURE_LEGACY__IMAP__ADDRESS="+imapProxy.Addr, "MAILCAPTURE_LISTEN__POP3=127.0.0.1:0",
		"MAILCAPTURE_VAULT__KEY_FILE="+key, "MAILCAPTURE_VAULT__FOLLOW_INTERVAL=1s")

	// 1. The user comes in over POP3 while the legacy IMAP server, which
	// captures use, is down: the capture cannot run.
	imapProxy.SetDown(true)
	srv := startServe(t, path, environ)
	srv.forbid(pass)
	pop3Addr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.pop3 addr=(\S+)`))[1]
	pc, err := pop3.Dial(context.Background(), pop3Addr, pop3.DialOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	pc.Quit()
	srv.waitFor(regexp.MustCompile(`account=` + regexp.QuoteMeta(user) + `.*(connection refused|EOF|connect)`))
	srv.stop(t)

	// 2. Restarted with the legacy server back: the capture resumes and
	// the account is cut over, nobody logging in.
	imapProxy.SetDown(false)
	srv = startServe(t, path, environ)
	srv.forbid(pass)
	srv.waitFor(regexp.MustCompile(`msg="vault: capture resumed without a login" account=` + regexp.QuoteMeta(user)))
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=` + regexp.QuoteMeta(user)))

	// 3. New legacy mail is followed without a login.
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(102, 2, 3000)}})
	srv.waitFor(regexp.MustCompile(`msg="follow sync copied new legacy mail" account=` + regexp.QuoteMeta(user) + ` messages=2`))
	srv.stop(t)
	assertNotInFiles(t, dataDir, pass)

	// 4. retire-legacy wipes the vault.
	if code, out, errOut := runCLI(t, environ, "retire-legacy", "--config", path, "--yes"); code != 0 {
		t.Fatalf("retire-legacy: exit %d %s %s", code, out, errOut)
	}
	st, err := store.Open(context.Background(), dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if creds, err := st.Credentials(context.Background()); err != nil || len(creds) != 0 {
		t.Fatalf("vault after retire-legacy: %d entries, %v", len(creds), err)
	}
}
