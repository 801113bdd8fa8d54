package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailcapture/store"
)

// runCLI runs one command line and returns its exit code and outputs.
func runCLI(t *testing.T, environ []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &environment{stdout: &out, stderr: &errOut, environ: environ}
	code := run(context.Background(), env, args)
	return code, out.String(), errOut.String()
}

func writeConfig(t *testing.T, extra string) (path, dataDir string) {
	t.Helper()
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	body := fmt.Sprintf(`data_dir: %s
domains: [example.org]
legacy:
  imap: {address: "127.0.0.1:1", tls: none}
listen:
  http: "127.0.0.1:0"
password_hash: {memory_kib: 8192, threads: 1}
%s`, dataDir, extra)
	path = filepath.Join(dir, "mailcapture.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, dataDir
}

func TestUsageAndHelp(t *testing.T) {
	code, out, _ := runCLI(t, nil)
	if code != 2 || !strings.Contains(out, "Commands:") {
		t.Fatalf("no arguments: exit %d, %q", code, out)
	}
	for _, c := range commands() {
		code, out, errOut := runCLI(t, nil, c.name, "--help")
		if code != 0 || !strings.Contains(out, "Usage: mailcapture "+c.name) {
			t.Errorf("%s --help: exit %d, stdout %q, stderr %q", c.name, code, out, errOut)
		}
	}
	code, _, errOut := runCLI(t, nil, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, nil, "status", "--no-such-flag")
	if code != 2 || !strings.Contains(errOut, "unknown flag: --no-such-flag") {
		t.Fatalf("unknown flag: exit %d, %q", code, errOut)
	}
	code, out, _ = runCLI(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "mailcapture ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

func TestCheckConfig(t *testing.T) {
	path, _ := writeConfig(t, "")
	code, out, errOut := runCLI(t, nil, "check-config", "--config", path)
	if code != 0 || !strings.Contains(out, "configuration is valid") || !strings.Contains(out, "127.0.0.1:1") {
		t.Fatalf("valid config: exit %d, %q %q", code, out, errOut)
	}
	// A flag overrides the file, and a bad value names its key.
	code, _, errOut = runCLI(t, nil, "check-config", "--config", path, "--legacy.imap.tls=sometimes")
	if code != 1 || !strings.Contains(errOut, `legacy.imap.tls: "sometimes" is not one of none, starttls, implicit`) {
		t.Fatalf("bad flag value: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, []string{"MAILCAPTURE_LISTEN__IMAPS=127.0.0.1:993"}, "check-config", "--config", path)
	if code != 1 || !strings.Contains(errOut, "listen.imaps: implicit TLS needs a certificate") {
		t.Fatalf("imaps without certificate: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, nil, "check-config", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 1 || !strings.Contains(errOut, "missing.yaml") {
		t.Fatalf("missing file: exit %d, %q", code, errOut)
	}
}

func TestStatusReadsTheStore(t *testing.T) {
	path, dataDir := writeConfig(t, "")
	code, _, errOut := runCLI(t, nil, "status", "--config", path)
	if code != 1 || !strings.Contains(errOut, "has serve run") {
		t.Fatalf("status without a store: exit %d, %q", code, errOut)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, dataDir, store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	acct, _ := st.CreateAccount(ctx, "ann@example.org", "pw", store.StateCapturing)
	st.SetLegacySize(ctx, acct.Name, 4, 4000)
	inbox, _ := st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", UIDValidity: 1})
	st.Append(ctx, inbox.ID, strings.NewReader("Subject: x\r\n\r\nhello\r\n"), nil, time.Now())
	// status works while the store is open for writing (serve running).
	code, out, errOut := runCLI(t, nil, "status", "--config", path)
	if code != 0 || !strings.Contains(out, "messages: 1 of 4 copied (25.0%)") || !strings.Contains(out, "ann@example.org") {
		t.Fatalf("status: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, nil, "status", "--config", path, "--json")
	var report struct {
		Accounts map[string]int `json:"accounts"`
		Stored   struct{ Messages int }
	}
	if code != 0 || json.Unmarshal([]byte(out), &report) != nil || report.Accounts["capturing"] != 1 || report.Stored.Messages != 1 {
		t.Fatalf("status --json: exit %d, %q", code, out)
	}
	st.Close()
}

// TestServe starts serve, waits for its HTTP listener to be announced in
// the log, checks the endpoints, and stops it.
func TestServe(t *testing.T) {
	path, _ := writeConfig(t, "")
	pr, pw := io.Pipe()
	env := &environment{stdout: io.Discard, stderr: pw}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, env, []string{"serve", "--config", path})
		pw.Close()
	}()
	addrRe := regexp.MustCompile(`msg="http listening" addr=(\S+)`)
	sc := bufio.NewScanner(pr)
	var addr string
	for sc.Scan() {
		if m := addrRe.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if addr == "" {
		t.Fatal("serve did not announce its HTTP listener")
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	// The legacy server (127.0.0.1:1) is not there: not ready, and why.
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "store: ok") || !strings.Contains(body, "legacy imap: dial tcp 127.0.0.1:1") {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `mailcapture_accounts{state="capturing"} 0`) || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d", code)
	}
	if code, body := get("/status.json"); code != 200 || !strings.Contains(body, `"accounts"`) {
		t.Errorf("/status.json: %d %q", code, body)
	}
	if code, body := get("/status"); code != 200 || !strings.Contains(body, "<title>mailcapture: migration status</title>") ||
		strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Errorf("/status (the page, no external assets): %d %.200q", code, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exited with %d", code)
	}
}
