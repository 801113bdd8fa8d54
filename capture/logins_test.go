package capture

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestExtraConnectionsOnlyForWaitingFolders: a convergence whose first
// connection takes every folder before the extra connection's delay
// logs in once for all its passes and its verification, and at the
// legacy POP3 server once, to map the UIDLs of the copied INBOX; a pass
// with nothing new to map does not log in there. With folders still
// waiting at the delay, the second connection is opened and takes some of
// them.
func TestExtraConnectionsOnlyForWaitingFolders(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, user, password)
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(1, 20, 2000)},
		{Name: "Sent", Messages: legacytest.Generate(2, 5, 2000)}, {Name: "Archive", Messages: legacytest.Generate(3, 5, 2000)}})
	proxy := legacytest.StartProxy(t, d.IMAPAddr)
	st := openStore(t)
	if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	e := newEngine(st, d)
	e.IMAP.Address = proxy.Addr
	e.POP3 = legacyclient.Endpoint{Address: d.POP3Addr, TLS: "none", Timeout: 10 * time.Second}
	e.ExtraConnectionDelay = time.Hour // the first connection always finishes first
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	if proxy.Accepted() != 1 || len(conv.Passes) < 2 {
		t.Fatalf("%d legacy IMAP connections for %d passes and a verification, want 1", proxy.Accepted(), len(conv.Passes))
	}
	if n := d.Logins(t, "pop3"); n != 1 {
		t.Fatalf("%d legacy POP3 logins for a convergence, want 1", n)
	}
	if _, err := e.Pass(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	if n := d.Logins(t, "pop3"); n != 1 {
		t.Fatalf("a pass with no new message logged in at the legacy POP3 server (%d logins)", n)
	}
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(4, 1, 2000)}})
	if res, err := e.Pass(ctx, user, password); err != nil || res.Added != 1 {
		t.Fatalf("pass after new mail: %+v, %v", res, err)
	}
	if n := d.Logins(t, "pop3"); n != 2 {
		t.Fatalf("a pass that copied a new INBOX message made %d POP3 logins in all, want 2", n)
	}
	acct, err := st.Account(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := st.UnmappedUIDLs(ctx, inbox.ID); err != nil || n != 0 {
		t.Fatalf("%d INBOX messages left without their legacy UIDL (%v)", n, err)
	}

	// Ten folders, no delay: the second connection takes its share.
	const other = "many@example.org"
	d.AddUser(t, other, password)
	var folders []legacytest.Folder
	for i := range 10 {
		folders = append(folders, legacytest.Folder{Name: fmt.Sprintf("F%d", i), Messages: legacytest.Generate(uint64(10+i), 20, 2000)})
	}
	d.Populate(t, other, password, folders)
	if _, err := st.CreateAccount(ctx, other, password, store.StateCapturing); err != nil {
		t.Fatal(err)
	}
	e.ExtraConnectionDelay = time.Nanosecond
	before := proxy.Accepted()
	res, err := e.Pass(ctx, other, password)
	if err != nil {
		t.Fatal(err)
	}
	if n := proxy.Accepted() - before; n != 2 || res.Added != 200 {
		t.Fatalf("a pass over ten folders with no delay: %d connections, %d messages, want 2 and 200", n, res.Added)
	}
}
