package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// bulkConfig writes a config and returns the environment that points it
// at the legacy server d.
func bulkConfig(t *testing.T, d *legacytest.Dovecot) (path, dataDir string, environ []string) {
	t.Helper()
	path, dataDir = writeConfig(t, "")
	return path, dataDir, []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=" + d.IMAPAddr,
		"MAILCAPTURE_LEGACY__POP3__ADDRESS=" + d.POP3Addr,
		"MAILCAPTURE_LEGACY__POP3__TLS=none",
		"MAILCAPTURE_LEGACY__TIMEOUT=10s",
	}
}

// TestBulkCaptureCSV captures the accounts of a CSV file; one password is
// wrong: that account is reported and the command fails, the others are
// captured.
func TestBulkCaptureCSV(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	var csv strings.Builder
	csv.WriteString("account,password\n")
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("user%d@example.org", i)
		d.AddUser(t, name, "pw,"+name)
		d.Populate(t, name, "pw,"+name, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(uint64(i), 8, 4000)}, {Name: "Sent", Messages: legacytest.Generate(uint64(i+10), 3, 4000)}})
		pw := "pw," + name
		if i == 2 {
			pw = "wrong"
		}
		fmt.Fprintf(&csv, "%s,%q\n", name, pw)
	}
	path, dataDir, environ := bulkConfig(t, d)
	csvPath := filepath.Join(t.TempDir(), "accounts.csv")
	os.WriteFile(csvPath, []byte(csv.String()), 0o600)

	code, out, errOut := runCLI(t, environ, "capture", "--config", path, "--csv", csvPath)
	if code != 1 || !strings.Contains(out, "user2@example.org: stopped: the legacy server refused the credentials") ||
		!strings.Contains(out, "2 of 3 accounts captured and verified, 22 messages stored") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	st, err := store.Open(context.Background(), dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("user%d@example.org", i)
		if ok, _ := st.VerifyPassword(context.Background(), name, "pw,"+name); !ok {
			t.Errorf("%s: the CSV password was not stored as its hash", name)
		}
	}
	// Bad input gets a clear answer.
	os.WriteFile(csvPath, []byte("a@example.org\n"), 0o600)
	if code, _, errOut := runCLI(t, environ, "capture", "--config", path, "--csv", csvPath); code != 1 || !strings.Contains(errOut, "line 1: want 2 fields") {
		t.Fatalf("bad CSV: exit %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, environ, "capture", "--config", path); code != 2 || !strings.Contains(errOut, "exactly one of --csv and --accounts") {
		t.Fatalf("no source: exit %d %q", code, errOut)
	}
}

// TestBulkCaptureMasterUser captures a list of accounts with a legacy
// master user, in both login styles.
func TestBulkCaptureMasterUser(t *testing.T) {
	for _, style := range []string{"separator", "sasl"} {
		t.Run(style, func(t *testing.T) {
			d := legacytest.Start(t, legacytest.Options{MasterUser: "admin", MasterPassword: "master secret"})
			var list strings.Builder
			list.WriteString("# accounts to capture\n")
			for i := 0; i < 2; i++ {
				name := fmt.Sprintf("m%d@example.org", i)
				d.AddUser(t, name, "unknown to the admin "+name)
				d.Populate(t, name, "unknown to the admin "+name, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(uint64(30+i), 6, 4000)}})
				fmt.Fprintln(&list, name)
			}
			path, dataDir, environ := bulkConfig(t, d)
			dir := t.TempDir()
			listPath, pwPath := filepath.Join(dir, "accounts"), filepath.Join(dir, "master-password")
			os.WriteFile(listPath, []byte(list.String()), 0o600)
			os.WriteFile(pwPath, []byte("master secret\n"), 0o600)
			code, out, errOut := runCLI(t, environ, "capture", "--config", path, "--accounts", listPath,
				"--master-user", "admin", "--master-password-file", pwPath, "--master-style", style)
			if code != 0 || !strings.Contains(out, "2 of 2 accounts captured and verified, 12 messages stored") {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			st, err := store.Open(context.Background(), dataDir, store.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if ok, _ := st.VerifyPassword(context.Background(), "m0@example.org", ""); ok {
				t.Fatal("an account captured by the master user verifies the empty password")
			}
		})
	}
}
