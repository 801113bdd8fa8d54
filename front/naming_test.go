package front

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/addresses"
	"mailcapture/capture"
	"mailcapture/cutover"
	"mailcapture/imapstore"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

// TestLoginFormsAreOneAccount: whatever form a user logs in with ("bob",
// "bob@EXAMPLE.org"), it is one account, bob@example.org: one capture,
// one local mailbox, one hash. Against a Dovecot with auth_default_realm
// (it takes both forms; the legacy server is sent what the user typed),
// and against one that knows only bare names (legacy.login_name:
// local_part sends it "bob" whatever the user typed; sending the address
// as typed is refused there).
func TestLoginFormsAreOneAccount(t *testing.T) {
	for _, c := range []struct {
		name      string
		opts      legacytest.Options
		legacyAs  string // the user as the legacy server knows it
		loginName string
		logins    []string
		refused   []string // forms the legacy server refuses with this naming
	}{
		{"default realm", legacytest.Options{DefaultRealm: "example.org"}, "bob@example.org", "as_typed", []string{"bob", "bob@EXAMPLE.org"}, nil},
		{"bare names only", legacytest.Options{}, "bob", "local_part", []string{"bob@example.org", "bob", "Bob@Example.org"}, nil},
		{"bare names only, as typed", legacytest.Options{}, "bob", "as_typed", []string{"bob"}, []string{"bob@example.org"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			const pass = "one account"
			d := legacytest.Start(t, c.opts)
			d.AddUser(t, c.legacyAs, pass)
			d.Populate(t, c.legacyAs, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(5, 6, 2000)}})
			st := storetest.Open(t, "")
			naming := addresses.Naming{DefaultDomain: "example.org", Delimiters: "+", LoginName: c.loginName}
			ep := legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second}
			sched := &capture.Scheduler{Engine: &capture.Engine{Store: st, IMAP: ep, Naming: naming}}
			ctx, cancel := context.WithCancel(context.Background())
			schedDone := make(chan struct{})
			go func() {
				sched.Run(ctx)
				close(schedDone)
			}()
			front := &IMAPFront{Router: &Router{Store: st, Scheduler: sched, Naming: naming}, Local: imapstore.NewServer(st, imapstore.Options{}), Legacy: ep}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go front.Serve(ln)
			t.Cleanup(func() {
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer scancel()
				front.Shutdown(sctx)
				cancel()
				<-schedDone
			})
			login := func(user string) (uint32, error) {
				t.Helper()
				cl, err := imapclient.DialInsecure(ln.Addr().String(), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				if err := cl.Login(user, pass).Wait(); err != nil {
					return 0, err
				}
				sel, err := cl.Select("INBOX", nil).Wait()
				if err != nil {
					t.Fatalf("SELECT as %s: %v", user, err)
				}
				cl.Logout().Wait()
				return sel.NumMessages, nil
			}
			for _, form := range c.logins {
				if n, err := login(form); err != nil || n != 6 {
					t.Fatalf("proxied login as %q: %d messages, %v", form, n, err)
				}
			}
			for _, form := range c.refused {
				if _, err := login(form); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
					t.Fatalf("login as %q, which the legacy server does not know: %v", form, err)
				}
			}
			accounts, err := st.Accounts(ctx)
			if err != nil || len(accounts) != 1 || accounts[0].Name != "bob@example.org" {
				t.Fatalf("accounts after logins as %v: %+v %v", c.logins, accounts, err)
			}
			select {
			case <-sched.Submit("bob@example.org", pass, true):
			case <-time.After(60 * time.Second):
				t.Fatal("the capture did not finish")
			}
			if js, _ := sched.Status("bob@example.org"); js.State != capture.JobReady {
				t.Fatalf("capture of bob@example.org (legacy login %q): %+v", accounts[0].LegacyLogin, js)
			}
			// A session logged in under another form of the name is the
			// account's too: the cut-over ends it.
			idler := dialTranscript(t, ln.Addr().String())
			idler.send(fmt.Sprintf("a LOGIN %q %q", c.logins[len(c.logins)-1], pass))
			idler.expect("a OK")
			idler.send("b SELECT INBOX")
			for !strings.HasPrefix(idler.expect(""), "b OK") {
			}
			idler.send("c IDLE")
			idler.expect("+ ")
			cut := &cutover.Cutover{Store: st, Sync: sched.Engine, IMAP: front}
			if err := cut.Run(ctx, "bob@example.org", pass); err != nil {
				t.Fatal(err)
			}
			idler.expect("* BYE")
			for _, form := range append(c.logins, "bob") {
				if n, err := login(form); err != nil || n != 6 {
					t.Fatalf("local login as %q: %d messages, %v", form, n, err)
				}
			}
			if accounts, _ := st.Accounts(ctx); len(accounts) != 1 || accounts[0].State != store.StateCaptured {
				t.Fatalf("accounts after local logins: %+v", accounts)
			}
		})
	}
}
