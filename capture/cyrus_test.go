package capture

import (
	"context"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestCaptureFromCyrus: a second legacy implementation. Cyrus IMAP (from
// Debian, unprivileged ports, private directory) with its classic
// namespace ("INBOX." prefix, "." separator), special-use folders of its
// own (lower-case attributes) and the generated mailbox of varied
// content, flags, keywords, nested folders and expunge gaps: the copy is
// exact (folders, subscriptions, special use, UIDVALIDITY, UIDNEXT, UIDs,
// flags, INTERNALDATE, sizes, bytes), the namespace is recorded, and a
// pass over the unchanged mailbox finds nothing.
func TestCaptureFromCyrus(t *testing.T) {
	ctx := context.Background()
	cy := legacytest.StartCyrus(t)
	cy.AddUser(t, user, password)
	msgs := legacytest.Generate(7, 120, 60000)
	cy.Populate(t, user, password, []legacytest.Folder{
		{Name: "INBOX", Subscribed: true, Messages: msgs[:70], Expunge: []int{0, 5, 6, 7, 30}},
		{Name: "Sent", Subscribed: true, Messages: msgs[70:90]},
		{Name: "Drafts", Messages: msgs[90:93]},
		{Name: "Projects/2024/Q1", Subscribed: true, Messages: msgs[93:110]},
		{Name: "Projects/Old", Messages: msgs[110:120], Expunge: []int{9}},
	})
	st := openStore(t)
	if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: cy.IMAPAddr, TLS: "none", Timeout: 10 * time.Second},
		BatchMessages: 7, FetchChunk: 11, VerifySample: 5}
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	if !conv.Verification.OK() {
		t.Fatalf("verification against Cyrus: %v", conv.Verification.Mismatches)
	}
	legacy := cy.Snapshot(t, user, password)
	if _, ok := legacy["INBOX.Projects.2024.Q1"]; !ok {
		t.Fatalf("Cyrus folders are not under INBOX. with '.': %v", keys(legacy))
	}
	assertSameMailbox(t, legacy, localSnapshot(t, st, user))
	acct, err := st.Account(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if acct.LegacyPrefix != "INBOX." || acct.LegacySeparator != "." {
		t.Fatalf("recorded namespace %q %q, want \"INBOX.\" \".\"", acct.LegacyPrefix, acct.LegacySeparator)
	}
	n := 0
	for _, f := range legacy {
		n += len(f.Messages)
	}
	if res, err := e.Pass(ctx, user, password); err != nil || res.Changed() {
		t.Fatalf("pass over the unchanged Cyrus mailbox: %+v %v", res, err)
	}
	t.Logf("Cyrus: %d folders, %d messages copied exactly", len(legacy), n)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
