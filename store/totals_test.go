package store

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// checkTotals compares each account's kept totals with a recount of its
// messages.
func checkTotals(t *testing.T, s *Store, when string) {
	t.Helper()
	ctx := context.Background()
	accounts, err := s.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accounts {
		kept, err := s.AccountProgress(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		var counted Progress
		if err := s.read.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(m.size), 0) FROM messages m
			JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = ?`, a.ID).Scan(&counted.Messages, &counted.Bytes); err != nil {
			t.Fatal(err)
		}
		if kept != counted {
			t.Fatalf("%s: %s's totals %+v, its messages %+v", when, a.Name, kept, counted)
		}
	}
	total, _, err := s.TotalProgress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all Progress
	s.read.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(size), 0) FROM messages").Scan(&all.Messages, &all.Bytes)
	if total != all {
		t.Fatalf("%s: total %+v, messages %+v", when, total, all)
	}
}

// TestAccountTotalsFollowTheMessages: the totals the status report reads
// stay those of the messages through appends, deliveries, held mail,
// expunges, moves, copies, a deleted mailbox and a merge of accounts.
func TestAccountTotalsFollowTheMessages(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	a, inboxA := newAccountWithInbox(t, s, "a@example.org")
	b, inboxB := newAccountWithInbox(t, s, "b@example.org")
	other, err := s.CreateMailbox(ctx, a.ID, MailboxSpec{Name: "Other"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if _, err := s.Append(ctx, inboxA.ID, bytes.NewReader(testMessage(i)), nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	checkTotals(t, s, "after appends")
	if _, err := s.Deliver(ctx, "x@example.net", []Destination{{MailboxID: inboxA.ID}, {MailboxID: inboxB.ID}, {Route: RouteHold, AccountID: b.ID, To: []string{"b@example.org"}}},
		bytes.NewReader(testMessage(100))); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after a delivery")
	if _, err := s.ReleaseHeld(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after held mail was released")
	if _, err := s.Expunge(ctx, inboxA.ID, []uint32{1, 2}); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after an expunge")
	if _, err := s.Move(ctx, inboxA.ID, []uint32{3}, other.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Copy(ctx, inboxA.ID, []uint32{4}, inboxB.ID); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after a move and a copy")
	if err := s.DeleteMailbox(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after a deleted mailbox")
	only, err := s.CreateMailbox(ctx, b.ID, MailboxSpec{Name: "Only b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, only.ID, bytes.NewReader(testMessage(200)), nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "before a merge")
	if _, err := s.MergeAccounts(ctx, "b@example.org", "a@example.org"); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after a merge")
	if p, _ := s.AccountProgress(ctx, a.ID); p.Messages == 0 {
		t.Fatalf("a's totals after the merge: %+v", p)
	}
}
