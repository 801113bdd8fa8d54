package capture

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestExtraConnectionsOnlyForWaitingFolders: a pass whose first
// connection takes every folder before the extra connection's delay
// opens no second one (one legacy login per pass and one for the
// verification); with folders still waiting at the delay, the second
// connection is opened and takes some of them.
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
	e.ExtraConnectionDelay = time.Hour // the first connection always finishes first
	conv, err := e.Converge(ctx, user, password, 5)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(conv.Passes) + 1; proxy.Accepted() != want {
		t.Fatalf("%d legacy connections for %d passes and a verification, want %d", proxy.Accepted(), len(conv.Passes), want)
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
