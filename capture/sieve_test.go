package capture

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestSieveScriptsCaptured: a pass copies the user's scripts from
// Pigeonhole's ManageSieve byte for byte, with which one is active; a
// script changed and another made active at the legacy server are
// picked up by the next pass; an engine without a ManageSieve server
// records the account as having none and its pass succeeds.
func TestSieveScriptsCaptured(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{TLS: true, Sieve: true})
	populate(t, d)
	lists := []byte("require [\"fileinto\", \"imap4flags\"];\r\nif header :contains \"List-Id\" \"dev.lists.example.org\" {\r\n  fileinto :flags \"\\\\Seen\" \"Lists/dév\";\r\n}\r\n")
	vacation := []byte("require \"vacation\";\nvacation :days 3 :subject \"Away\" \"I am away.\";\n")
	d.PutSieve(t, user, "lists", lists, true)
	d.PutSieve(t, user, "away", vacation, false)
	st := openStore(t)
	acct, err := st.CreateAccount(ctx, user, password, store.StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(st, d)
	e.ManageSieve = manageSieveOf(d)
	check := func(want map[string]string, active string) {
		t.Helper()
		got, err := st.SieveScripts(ctx, acct.ID)
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]string{}
		gotActive := ""
		for _, sc := range got {
			have[sc.Name] = string(sc.Script)
			if sc.Active {
				gotActive = sc.Name
			}
		}
		if fmt.Sprint(have) != fmt.Sprint(want) || gotActive != active {
			t.Fatalf("stored scripts %q (active %q), want %q (active %q)", have, gotActive, want, active)
		}
		if src, _, _ := st.SieveState(ctx, acct.ID); src != store.SieveCopied {
			t.Fatalf("sieve source %q", src)
		}
	}
	if _, err := e.Pass(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	check(map[string]string{"lists": string(lists), "away": string(vacation)}, "lists")

	// Changed at the legacy server before the cut-over.
	lists2 := append(append([]byte(nil), lists...), "# more\r\n"...)
	d.PutSieve(t, user, "lists", lists2, false)
	d.PutSieve(t, user, "away", vacation, true)
	if _, err := e.Pass(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	check(map[string]string{"lists": string(lists2), "away": string(vacation)}, "away")

	// No ManageSieve server: recorded as none, nothing fails.
	other := "nosieve@example.org"
	d.AddUser(t, other, password)
	if _, err := st.CreateAccount(ctx, other, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	plain := newEngine(st, d)
	if _, err := plain.Pass(ctx, other, password); err != nil {
		t.Fatal(err)
	}
	o, _ := st.Account(ctx, other)
	if src, _, _ := st.SieveState(ctx, o.ID); src != store.SieveNone {
		t.Fatalf("without ManageSieve: source %q, want none", src)
	}
}

// TestSieveScriptTheInterpreterCannotRun: an active script that requires
// an extension the interpreter lacks is copied as it is, and the
// account's last Sieve error says so at once.
func TestSieveScriptTheInterpreterCannotRun(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{TLS: true, Sieve: true})
	populate(t, d)
	script := []byte("require [\"fileinto\", \"regex\"];\nif header :regex \"Subject\" \"^a+$\" { fileinto \"A\"; }\n")
	d.PutSieve(t, user, "regex", script, true)
	st := openStore(t)
	acct, err := st.CreateAccount(ctx, user, password, store.StateCapturing)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(st, d)
	e.ManageSieve = manageSieveOf(d)
	if _, err := e.Pass(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	got, err := st.SieveScripts(ctx, acct.ID)
	if err != nil || len(got) != 1 || string(got[0].Script) != string(script) {
		t.Fatalf("stored %+v %v", got, err)
	}
	if _, lastErr, _ := st.SieveState(ctx, acct.ID); !strings.Contains(lastErr, `script "regex"`) || !strings.Contains(lastErr, "regex") {
		t.Fatalf("last sieve error %q", lastErr)
	}
}

// manageSieveOf is the endpoint of a Dovecot's ManageSieve, over STARTTLS.
func manageSieveOf(d *legacytest.Dovecot) legacyclient.Endpoint {
	return legacyclient.Endpoint{Address: d.ManageSieveAddr, TLS: "starttls", TLSConfig: &tls.Config{RootCAs: d.CertPool, ServerName: "127.0.0.1"}, Timeout: 10 * time.Second}
}
