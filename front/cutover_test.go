package front

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/cutover"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestCutover: a user is connected through the proxy (in IDLE) while the
// capture converges. The cut-over ends that session with BYE, picks up the
// mail that reached the legacy server meanwhile, and flips the account to
// captured; the next login is served from the store with the same
// mailbox, UIDVALIDITY and UIDs.
func TestCutover(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	tr := dialTranscript(t, f.addr)
	tr.send(fmt.Sprintf("a LOGIN %s %q", imapUser, password))
	tr.expect("a OK ")
	tr.send("b SELECT INBOX")
	for !strings.HasPrefix(tr.expect(""), "b OK") {
	}
	f.waitCaptured(t, imapUser, password)
	tr.send("c IDLE")
	tr.expect("+ ")
	// New mail at the legacy server after the copy converged.
	f.d.Populate(t, imapUser, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(99, 2, 3000)}})

	cut := &cutover.Cutover{Store: f.st, Sync: f.sched.Engine, IMAP: f.front}
	if err := cut.Run(ctx, imapUser, password); err != nil {
		t.Fatal(err)
	}
	for {
		line := tr.expect("")
		if strings.HasPrefix(line, "* BYE") {
			break
		}
	}
	if _, err := tr.r.ReadString('\n'); err == nil {
		t.Fatal("the proxied session stayed open after BYE")
	}
	acct, _ := f.st.Account(ctx, imapUser)
	if acct.State != store.StateCaptured {
		t.Fatalf("state after cut-over: %s", acct.State)
	}
	c, err := imapclient.DialInsecure(f.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(imapUser, password).Wait(); err != nil {
		t.Fatal(err)
	}
	local := legacytest.SnapshotIMAP(t, c)
	legacy := f.d.Snapshot(t, imapUser, password)
	if len(local["INBOX"].Messages) != 26 || len(legacy["INBOX"].Messages) != 26 {
		t.Fatalf("INBOX: %d messages locally, %d on the legacy server, want 26", len(local["INBOX"].Messages), len(legacy["INBOX"].Messages))
	}
	for i, m := range legacy["INBOX"].Messages {
		if local["INBOX"].Messages[i].UID != m.UID || local["INBOX"].UIDValidity != legacy["INBOX"].UIDValidity {
			t.Fatalf("INBOX message %d: UID %d locally, %d legacy", i, local["INBOX"].Messages[i].UID, m.UID)
		}
	}
	// A second cut-over is a no-op.
	if err := cut.Run(ctx, imapUser, password); err != nil {
		t.Fatal(err)
	}
}

// TestCutoverWaitsForCommandBoundary: a command in flight is answered
// before the BYE.
func TestCutoverWaitsForCommandBoundary(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	tr := dialTranscript(t, f.addr)
	tr.send(fmt.Sprintf("a LOGIN %s %q", imapUser, password))
	tr.expect("a OK ")
	f.waitCaptured(t, imapUser, password)
	// Half a command: the client announces a literal and has not sent it.
	tr.send("b SELECT {5}")
	tr.expect("+ ") // Dovecot asks for the literal
	cutDone := make(chan error, 1)
	go func() {
		cut := &cutover.Cutover{Store: f.st, Sync: f.sched.Engine, IMAP: f.front}
		cutDone <- cut.Run(ctx, imapUser, password)
	}()
	// The proxy waits for the end of the command before ending the session:
	// the rest of the command still reaches the legacy server and its
	// answer the client.
	tr.send("INBOX")
	for {
		line := tr.expect("")
		if strings.HasPrefix(line, "b ") {
			if !strings.HasPrefix(line, "b OK") {
				t.Fatalf("answer to the command in flight: %q", line)
			}
			break
		}
		if strings.HasPrefix(line, "* BYE") {
			t.Fatal("BYE in the middle of a command")
		}
	}
	tr.expect("* BYE")
	if err := <-cutDone; err != nil {
		t.Fatal(err)
	}
}

// TestFollowAfterCutover: mail that still reaches the legacy server after
// the cut-over is copied at the user's next login, with a fresh UID; what
// the user deleted locally is not brought back.
func TestFollowAfterCutover(t *testing.T) {
	followed := make(chan error, 4)
	var f *imapFixture
	f = startIMAPFront(t, nil, func(fr *IMAPFront, _ *legacytest.Dovecot) {
		fr.Router.Follow = func(ctx context.Context, account, password string) {
			_, err := f.sched.Engine.Follow(ctx, account, password)
			followed <- err
		}
	})
	ctx := context.Background()
	if _, err := f.st.CreateAccount(ctx, imapUser, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	f.waitCaptured(t, imapUser, password)
	cut := &cutover.Cutover{Store: f.st, Sync: f.sched.Engine, IMAP: f.front}
	if err := cut.Run(ctx, imapUser, password); err != nil {
		t.Fatal(err)
	}
	acct, _ := f.st.Account(ctx, imapUser)
	inbox, _ := f.st.MailboxByName(ctx, acct.ID, "INBOX")
	uids, _ := f.st.UIDs(ctx, inbox.ID)
	// The user deletes the newest message locally.
	if _, err := f.st.Expunge(ctx, inbox.ID, uids[len(uids)-1:]); err != nil {
		t.Fatal(err)
	}
	before, _ := f.st.Status(ctx, inbox.ID, 0)
	// A sender with a cached old MX delivers to the legacy server.
	late := legacytest.Generate(123, 1, 3000)
	f.d.Populate(t, imapUser, password, []legacytest.Folder{{Name: "INBOX", Messages: late}})

	c, err := imapclient.DialInsecure(f.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(imapUser, password).Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-followed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no follow sync after the local login")
	}
	after, _ := f.st.UIDs(ctx, inbox.ID)
	if len(after) != len(uids) || after[len(after)-1] != before.UIDNext {
		t.Fatalf("after follow: %d messages, last UID %d; want %d messages, last UID %d (fresh)", len(after), after[len(after)-1], len(uids), before.UIDNext)
	}
	msgs, _ := f.st.Messages(ctx, inbox.ID, []store.UIDRange{{Start: before.UIDNext, Stop: before.UIDNext}})
	body, _ := f.st.ReadBody(msgs[0].ID)
	if !strings.Contains(string(body), "Message-ID: <123.0@legacy.example>") {
		t.Fatalf("the followed message is not the late one: %.80q", body)
	}
	// A second login finds nothing new.
	c2, _ := imapclient.DialInsecure(f.addr, nil)
	defer c2.Close()
	c2.Login(imapUser, password).Wait()
	if err := <-followed; err != nil {
		t.Fatal(err)
	}
	if again, _ := f.st.UIDs(ctx, inbox.ID); len(again) != len(after) {
		t.Fatalf("a second follow copied again: %d -> %d", len(after), len(again))
	}
}
