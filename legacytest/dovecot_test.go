package legacytest

import (
	"bytes"
	"testing"
)

// TestDovecotRoundTrip checks the harness itself: a private Dovecot
// starts, takes uploads with flags and dates, expunges, and serves them.
func TestDovecotRoundTrip(t *testing.T) {
	d := Start(t, Options{Separator: ".", Prefix: "INBOX."})
	d.AddUser(t, "ann@example.org", "secret")
	msgs := Generate(1, 20, 20000)
	d.Populate(t, "ann@example.org", "secret", []Folder{
		{Name: "INBOX", Messages: msgs, Expunge: []int{3, 4}},
		{Name: "Sent", Subscribed: true, Messages: msgs[:2]},
		{Name: "Projects/2024", Messages: msgs[:1]},
	})
	snap := d.Snapshot(t, "ann@example.org", "secret")
	inbox := snap["INBOX"]
	if inbox == nil || len(inbox.Messages) != 18 {
		t.Fatalf("INBOX: %+v", inbox)
	}
	if inbox.Messages[3].UID != 6 {
		t.Fatalf("expunged messages left no gap: UID %d at position 4", inbox.Messages[3].UID)
	}
	if sent := snap["INBOX.Sent"]; sent == nil || !sent.Subscribed || len(sent.Attrs) != 1 || sent.Attrs[0] != `\Sent` {
		t.Fatalf("INBOX.Sent: %v", sent != nil && sent.Subscribed)
	}
	if snap["INBOX.Projects.2024"] == nil {
		t.Fatalf("nested folder missing: %v", snap)
	}
	// CRLF messages come back byte for byte.
	if !bytes.Equal(inbox.Messages[0].Body, msgs[0].Body) && bytes.Contains(msgs[0].Body, []byte("\r\n")) {
		t.Fatalf("message 1 changed on the way")
	}
	if int64(len(inbox.Messages[0].Body)) != inbox.Messages[0].Size {
		t.Fatalf("RFC822.SIZE %d != %d bytes served", inbox.Messages[0].Size, len(inbox.Messages[0].Body))
	}
}
