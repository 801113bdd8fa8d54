package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// spooledRows lists the spool with `mailcapture queue list --json`.
func spooledRows(t *testing.T, environ []string, path string) []queueRow {
	t.Helper()
	code, out, errOut := runCLI(t, environ, "queue", "--config", path, "list", "--json")
	var rows []queueRow
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
		t.Fatalf("queue list: exit %d %s %s", code, out, errOut)
	}
	return rows
}

// waitSpool waits (bounded) until the spool has n messages.
func waitSpool(t *testing.T, environ []string, path string, n int) []queueRow {
	t.Helper()
	for i := 0; ; i++ {
		rows := spooledRows(t, environ, path)
		if len(rows) == n {
			return rows
		}
		if i == 200 {
			t.Fatalf("the spool holds %d messages, want %d", len(rows), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestQueueCommand: with the legacy server unreachable, relayed mail waits
// in the spool; `queue list` shows it with its error, `queue retry` sends
// it once the legacy server is back, `queue drop --yes` removes one, all
// while serve runs.
func TestQueueCommand(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, "legacy@example.org", "pw")
	proxy := legacytest.StartProxy(t, d.LMTPAddr)
	path, dataDir, environ := bulkConfig(t, d)
	// Two messages spooled before serve starts, the legacy server down.
	st, err := store.Open(context.Background(), dataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"keep", "drop"} {
		body := "Message-ID: <" + id + "@example.net>\r\nSubject: " + id + "\r\n\r\nhello\r\n"
		if _, err := st.Enqueue(context.Background(), store.RouteLegacy, 0, store.Envelope{From: "a@example.net", To: []string{"legacy@example.org"}}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	proxy.SetDown(true)
	environ = append(environ, "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+proxy.Addr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none")
	srv := startServe(t, path, environ)
	srv.waitFor(regexp.MustCompile(`msg="the legacy server did not take a spooled message; it will be tried again"`))
	srv.waitFor(regexp.MustCompile(`msg="the legacy server did not take a spooled message; it will be tried again"`))

	rows := spooledRows(t, environ, path)
	if len(rows) != 2 || rows[0].Attempts != 1 || rows[0].LastError == "" || rows[0].MessageID != "<keep@example.net>" {
		t.Fatalf("queue list: %+v", rows)
	}
	if code, out, _ := runCLI(t, environ, "queue", "--config", path, "list"); code != 0 || !strings.Contains(out, "2 messages spooled") ||
		!strings.Contains(out, "legacy@example.org") {
		t.Fatalf("queue list (text): exit %d\n%s", code, out)
	}
	// Bad calls get a usage error naming the problem.
	for args, want := range map[string]string{
		"drop":    "give the ids",
		"retry":   "ids or --all",
		"retry x": `"x" is not a message id`,
		"purge":   `unknown action "purge"`,
		"drop " + strconv.FormatInt(rows[1].ID, 10): "confirm with --yes",
	} {
		code, _, errOut := runCLI(t, environ, append([]string{"queue", "--config", path}, strings.Fields(args)...)...)
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("queue %s: exit %d %q, want %q", args, code, errOut, want)
		}
	}
	if code, out, errOut := runCLI(t, environ, "queue", "--config", path, "drop", strconv.FormatInt(rows[1].ID, 10), "--yes"); code != 0 {
		t.Fatalf("queue drop: exit %d %s %s", code, out, errOut)
	}
	srv.waitFor(regexp.MustCompile(`msg="a spooled message was dropped at the admin's request"`))
	proxy.SetDown(false)
	if code, out, errOut := runCLI(t, environ, "queue", "--config", path, "retry", "--all"); code != 0 || !strings.HasPrefix(out, "1 messages due now") {
		t.Fatalf("queue retry: exit %d %s %s", code, out, errOut)
	}
	srv.waitFor(regexp.MustCompile(`msg="relay: delivered to the legacy server"`))
	waitSpool(t, environ, path, 0)
	snap := d.Snapshot(t, "legacy@example.org", "pw")
	if msgs := snap["INBOX"].Messages; len(msgs) != 1 || !strings.Contains(string(msgs[0].Body), "<keep@example.net>") {
		t.Fatalf("legacy INBOX after retry: %d messages", len(msgs))
	}
	srv.stop(t)
}
