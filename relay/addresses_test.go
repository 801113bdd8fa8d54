package relay

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailcapture/addresses"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

const testAliases = `robert@example.org  local@example.org
team@example.org    local@example.org, moving@example.org, legacy@example.org
`

// aliasDirectory is a directory over st with the test aliases and the
// "+" delimiter.
func aliasDirectory(t *testing.T, st *store.Store) *addresses.Directory {
	t.Helper()
	tbl, _, err := addresses.Parse(strings.NewReader(testAliases), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	dir := &addresses.Directory{Naming: addresses.Naming{DefaultDomain: "example.org", Delimiters: "+"}, Domains: []string{"example.org"}, Store: st}
	dir.SetTable(tbl)
	return dir
}

// TestEachAliasTargetTakesItsRoute: mail to an alias whose targets are
// in three states is stored once for each, in one transaction: in the
// captured target's INBOX, held for the one in cut-over, relayed for the
// other under its own address (the legacy server, which has every user,
// gives nothing to the captured one). A "+" address and an alias reach
// the captured mailbox without the legacy server.
func TestEachAliasTargetTakesItsRoute(t *testing.T) {
	var dir *addresses.Directory
	f := start(t, func(b *Backend) {
		dir = aliasDirectory(t, b.Store)
		b.Directory = dir
	})
	f.queue.Directory = dir
	ctx := context.Background()
	out := f.smtplib(t, `
send(["team@example.org"], "team@example.net")
send(["local+lists@example.org"], "plus@example.net")
send(["Robert@example.org", "local@example.org"], "both@example.net")
`)
	if out != "RCPT team@example.org 250\nDATA 250\nRCPT local+lists@example.org 250\nDATA 250\nRCPT Robert@example.org 250\nRCPT local@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	got := f.localInbox(t, "local@example.org")
	if len(got) != 3 || !strings.Contains(got[0], "<team@example.net>") || !strings.Contains(got[1], "<plus@example.net>") || !strings.Contains(got[2], "<both@example.net>") {
		t.Fatalf("the captured target's INBOX holds %d messages, want team, plus and both once each", len(got))
	}
	moving, _ := f.st.Account(ctx, "moving@example.org")
	held, err := f.st.Held(ctx, moving.ID)
	if err != nil || len(held) != 1 || held[0].MessageID != "<team@example.net>" {
		t.Fatalf("held for the target in cut-over: %+v %v", held, err)
	}
	spooled, _ := f.st.Spooled(ctx)
	var legacy []store.SpoolEntry
	for _, e := range spooled {
		if e.Route == store.RouteLegacy {
			legacy = append(legacy, e)
		}
	}
	if len(legacy) != 1 || strings.Join(legacy[0].To, ",") != "legacy@example.org" {
		t.Fatalf("spooled for the legacy server: %+v, want one entry to legacy@example.org", legacy)
	}
	f.queue.pass(ctx)
	if msgs := f.d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages; len(msgs) != 1 || !strings.Contains(string(msgs[0].Body), "<team@example.net>") {
		t.Fatalf("the uncaptured target's legacy INBOX: %d messages", len(msgs))
	}
	for _, user := range []string{"local@example.org", "moving@example.org"} {
		if n := len(f.d.Snapshot(t, user, "pw")["INBOX"].Messages); n != 0 {
			t.Fatalf("the legacy server gave %s %d messages", user, n)
		}
	}
	relayed, err := f.st.RelayedSince(ctx, time.Now().Add(-time.Hour))
	if err != nil || len(relayed) != 1 || relayed[0].Address != "legacy@example.org" || relayed[0].Count != 1 {
		t.Fatalf("relayed recipients recorded: %+v %v", relayed, err)
	}
}

// TestNothingWaitsForARetiredLegacyServer: once the legacy server is
// retired, a recipient that reaches a captured account (its extension,
// an alias) is delivered locally, one that reaches none gets 550 5.1.1 at
// RCPT, mail spooled for the legacy server before is delivered to the
// captured accounts it reaches and returned to its sender for the rest,
// and no connection is made to the legacy server.
func TestNothingWaitsForARetiredLegacyServer(t *testing.T) {
	stub, connections := connectionCounter(t)
	stubLegacy := Legacy{Endpoint: legacyclient.Endpoint{Address: stub, Timeout: 5 * time.Second}, Protocol: "lmtp"}
	retired := func() bool { return true }
	var dir *addresses.Directory
	f := start(t, func(b *Backend) {
		dir = aliasDirectory(t, b.Store)
		b.Directory, b.Legacy, b.Retired = dir, stubLegacy, retired
	})
	f.queue.Directory, f.queue.Legacy, f.queue.Retired = dir, stubLegacy, retired
	storetest.Account(t, f.st, "sender@example.org", "pw", store.StateCaptured)
	ctx := context.Background()
	// Spooled before the retirement: one recipient now captured (by an
	// alias), one that reaches no mailbox.
	if _, err := f.st.Enqueue(ctx, store.RouteLegacy, 0, store.Envelope{From: "sender@example.org", To: []string{"robert@example.org", "nobody@example.org"}},
		strings.NewReader("Message-ID: <before@example.net>\r\nSubject: before\r\n\r\nspooled\r\n")); err != nil {
		t.Fatal(err)
	}

	out := f.smtplib(t, `
s.mail("a@example.net")
for r in ["local+x@example.org", "robert@example.org", "nobody@example.org", "legacy@example.org", "team@example.org"]:
    rcpt(r)
code, msg = s.data("Message-ID: <after@example.net>\r\nSubject: after\r\n\r\nhello\r\n")
print("DATA", code)
`)
	want := "RCPT local+x@example.org 250\nRCPT robert@example.org 250\nRCPT nobody@example.org 550\nRCPT legacy@example.org 550\nRCPT team@example.org 250\nDATA 250\n"
	if out != want {
		t.Fatalf("smtplib said:\n%s\nwant:\n%s", out, want)
	}
	f.queue.pass(ctx)
	local := f.localInbox(t, "local@example.org")
	if len(local) != 2 || !strings.Contains(local[0], "<after@example.net>") || !strings.Contains(local[1], "<before@example.net>") {
		t.Fatalf("local@'s INBOX holds %d messages, want after and before once each", len(local))
	}
	dsn := f.localInbox(t, "sender@example.org")
	if len(dsn) != 1 || !strings.Contains(dsn[0], "nobody@example.org") || !strings.Contains(dsn[0], "retired") {
		t.Fatalf("the sender's INBOX: %d messages, want one notice for nobody@", len(dsn))
	}
	moving, _ := f.st.Account(ctx, "moving@example.org")
	if held, _ := f.st.Held(ctx, moving.ID); len(held) != 1 {
		t.Fatalf("held for the target in cut-over: %d, want the message to team@", len(held))
	}
	if n := connections.Load(); n != 0 {
		t.Fatalf("%d connections to the retired legacy server", n)
	}
	if legacy, held, _ := f.st.SpoolCounts(ctx); legacy != 0 || held != 1 {
		t.Fatalf("spool: %d for the legacy server, %d held", legacy, held)
	}
}

// TestOutboundRelayCarriesForwardsAfterRetirement: with an outbound
// relay, once the legacy server is retired, an alias that forwards
// outside the domains still gets its copy out (spooled on the outbound
// route, relayed to a sink standing in for the outside world), and so
// does mail spooled for the legacy server before the retirement to a
// sender elsewhere (a delivery notice); nothing connects to the legacy
// server.
func TestOutboundRelayCarriesForwardsAfterRetirement(t *testing.T) {
	stub, connections := connectionCounter(t)
	sink := legacytest.StartSink(t)
	stubLegacy := Legacy{Endpoint: legacyclient.Endpoint{Address: stub, Timeout: 5 * time.Second}, Protocol: "lmtp"}
	outbound := &Legacy{Endpoint: legacyclient.Endpoint{Address: sink.Addr, Timeout: 5 * time.Second}, Protocol: "smtp", Hostname: "mx.example.org"}
	retired := func() bool { return true }
	tbl, _, err := addresses.Parse(strings.NewReader("fwd@example.org local@example.org, someone@elsewhere.example\n"), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	var dir *addresses.Directory
	f := start(t, func(b *Backend) {
		dir = &addresses.Directory{Naming: addresses.Naming{DefaultDomain: "example.org"}, Domains: []string{"example.org"}, Store: b.Store}
		dir.SetTable(tbl)
		b.Directory, b.Legacy, b.Retired, b.Outbound = dir, stubLegacy, retired, true
	})
	f.queue.Directory, f.queue.Legacy, f.queue.Retired, f.queue.Outbound = dir, stubLegacy, retired, outbound
	ctx := context.Background()
	if _, err := f.st.Enqueue(ctx, store.RouteLegacy, 0, store.Envelope{From: "", To: []string{"sender@elsewhere.example"}},
		strings.NewReader("Message-ID: <notice@example.org>\r\nSubject: notice\r\n\r\nreturned\r\n")); err != nil {
		t.Fatal(err)
	}
	out := f.smtplib(t, `send(["fwd@example.org"], "fwd@example.net")`)
	if out != "RCPT fwd@example.org 250\nDATA 250\n" {
		t.Fatalf("smtplib said:\n%s", out)
	}
	for range 3 { // the notice is moved to the outbound route, then sent
		f.queue.pass(ctx)
	}
	got := map[string]string{}
	for _, m := range sink.Wait(t, 2) {
		got[messageIDOf(string(m.Data))] = strings.Join(m.To, ",")
	}
	if got["<fwd@example.net>"] != "someone@elsewhere.example" || got["<notice@example.org>"] != "sender@elsewhere.example" || len(got) != 2 {
		t.Fatalf("the outside world got %v", got)
	}
	if local := f.localInbox(t, "local@example.org"); len(local) != 1 || !strings.Contains(local[0], "<fwd@example.net>") {
		t.Fatalf("local@'s INBOX holds %d messages, want the forwarded one", len(local))
	}
	if n := connections.Load(); n != 0 {
		t.Fatalf("%d connections to the retired legacy server", n)
	}
	if spooled, _ := f.st.Spooled(ctx); len(spooled) != 0 {
		t.Fatalf("%d messages still spooled", len(spooled))
	}
}

// messageIDOf returns a message's Message-ID field.
func messageIDOf(msg string) string {
	for _, line := range strings.Split(msg, "\r\n") {
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Message-ID") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// connectionCounter listens on loopback where a retired legacy server
// was, and counts the connections made to it (each closed at once).
func connectionCounter(t *testing.T) (addr string, connections *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	connections = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connections.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), connections
}
