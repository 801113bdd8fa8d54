package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/store"
	"mailcapture/storetest"
)

// TestPasswordChangedAtLegacy: a user changes the password at the legacy
// server after the capture; the new password, failing against the local
// hash, is tried once at the legacy server, which accepts it, so the local
// hash is replaced. The old password then fails everywhere.
func TestPasswordChangedAtLegacy(t *testing.T) {
	f := startIMAPFront(t, nil, func(fr *IMAPFront, d *legacytest.Dovecot) {
		fr.Router.LegacyCheck = func(ctx context.Context, user, pass string) error {
			return fr.Router.Scheduler.Engine.CheckPassword(ctx, user, pass)
		}
	})
	ctx := context.Background()
	login := func(pass string) error {
		c, err := imapclient.DialInsecure(f.addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(imapUser, pass).Wait(); err != nil {
			return err
		}
		if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 24 {
			t.Fatalf("SELECT after login: %+v %v", sel, err)
		}
		return c.Logout().Wait()
	}
	if err := login(password); err != nil {
		t.Fatalf("first login (legacy route): %v", err)
	}
	f.waitCaptured(t, imapUser, password)
	storetest.MarkCaptured(t, f.st, imapUser)

	const newPassword = "changed at the legacy server"
	f.d.ChangePassword(t, imapUser, newPassword)
	if err := login(newPassword); err != nil {
		t.Fatalf("login with the password changed at the legacy server: %v", err)
	}
	if ok, _ := f.st.VerifyPassword(ctx, imapUser, newPassword); !ok {
		t.Fatal("the local hash was not replaced")
	}
	if ok, _ := f.st.VerifyPassword(ctx, imapUser, password); ok {
		t.Fatal("the old password still verifies locally")
	}
	if err := login(password); err == nil {
		t.Fatal("the old password was accepted after the change")
	}
	if acct, _ := f.st.Account(ctx, imapUser); acct.State != store.StateCaptured {
		t.Fatalf("account state %s after the password change", acct.State)
	}
}

// TestShadowModeRecordsLogins: in shadow mode every login is proxied to
// the legacy server and only recorded (who, which protocol, how often):
// no account, no capture.
func TestShadowModeRecordsLogins(t *testing.T) {
	f := startIMAPFront(t, nil, func(fr *IMAPFront, d *legacytest.Dovecot) {
		fr.Router.Mode = "shadow"
		fr.Router.Scheduler = nil
	})
	ctx := context.Background()
	for i := range 2 {
		c, err := imapclient.DialInsecure(f.addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(imapUser, password).Wait(); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		// The session is the legacy server's: its folder naming shows.
		if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 24 {
			t.Fatalf("SELECT through the shadow proxy: %+v %v", sel, err)
		}
		c.Logout().Wait()
		c.Close()
	}
	// POP3 over the same router.
	backend := &POP3Backend{Router: f.front.Router, Legacy: f.front.Legacy}
	backend.Legacy.Address = f.d.POP3Addr
	drop, err := backend.Login(ctx, imapUser, password, loopback)
	if err != nil {
		t.Fatalf("shadow POP3 login: %v", err)
	}
	if n := len(drop.Messages()); n != 24 {
		t.Fatalf("shadow POP3 maildrop has %d messages, want 24", n)
	}
	drop.Close()
	if _, err := backend.Login(ctx, imapUser, "wrong", loopback); !errors.Is(err, pop3.ErrAuthFailed) {
		t.Fatalf("bad password in shadow mode: %v", err)
	}

	if _, err := f.st.Account(ctx, imapUser); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("shadow mode recorded an account: %v", err)
	}
	f.front.Router.FlushLogins()
	logins, err := f.st.Logins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range logins {
		got = append(got, l.Account+"/"+l.Protocol+"/"+strconv.FormatInt(l.Count, 10))
		if l.First.IsZero() || l.Last.Before(l.First) || time.Since(l.Last) > time.Minute {
			t.Fatalf("login record times: %+v", l)
		}
	}
	if want := imapUser + "/imap/2 " + imapUser + "/pop3/1"; strings.Join(got, " ") != want {
		t.Fatalf("login records %q, want %q", strings.Join(got, " "), want)
	}
}

// loopback is the client address of logins made without a connection.
var loopback = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

// TestProxiedIMAPIdleTimeout: a proxied session whose client sends
// nothing for the idle timeout is closed.
func TestProxiedIMAPIdleTimeout(t *testing.T) {
	f := startIMAPFront(t, nil, func(fr *IMAPFront, d *legacytest.Dovecot) {
		fr.IdleTimeout = 300 * time.Millisecond
	})
	tr := dialTranscript(t, f.addr)
	// The idle clock starts once the session is spliced, after the LOGIN
	// was sent.
	start := time.Now()
	tr.send(fmt.Sprintf("a LOGIN %s %q", imapUser, password))
	tr.expect("a OK")
	tr.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(tr.r)
	if err != nil {
		t.Fatalf("the idle session was not closed: %v (%q)", err, rest)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", waited)
	}
}

// TestShutdownSaysBye: at shutdown every session ends with * BYE between
// two commands: one not logged in, one served locally, one proxied.
func TestShutdownSaysBye(t *testing.T) {
	f := startIMAPFront(t, nil)
	ctx := context.Background()
	// Capture the account, then flip it as a cut-over would.
	tr := dialTranscript(t, f.addr)
	tr.send(fmt.Sprintf("a LOGIN %s %q", imapUser, password))
	tr.expect("a OK")
	tr.send("b LOGOUT")
	tr.expect("* BYE")
	f.waitCaptured(t, imapUser, password)
	storetest.MarkCaptured(t, f.st, imapUser)

	preauth := dialTranscript(t, f.addr)
	local := dialTranscript(t, f.addr)
	local.send(fmt.Sprintf("a LOGIN %s %q", imapUser, password))
	local.expect("a OK")
	local.send("b SELECT INBOX")
	for !strings.HasPrefix(local.expect(""), "b OK") {
	}
	// A proxied session: another account, unknown here.
	f.d.AddUser(t, "other@example.org", "other pass")
	proxied := dialTranscript(t, f.addr)
	proxied.send(`a LOGIN other@example.org "other pass"`)
	proxied.expect("a OK")

	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.front.Shutdown(sctx) }()
	for name, tr := range map[string]*transcript{"not logged in": preauth, "local": local, "proxied": proxied} {
		line := tr.expect("")
		for strings.HasPrefix(line, "* ") && !strings.HasPrefix(line, "* BYE") {
			line = tr.expect("") // updates before the BYE
		}
		if !strings.HasPrefix(line, "* BYE") {
			t.Errorf("%s session got %q at shutdown, want * BYE", name, line)
		}
		tr.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if rest, err := io.ReadAll(tr.r); err != nil {
			t.Errorf("%s session not closed after BYE: %v %q", name, err, rest)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
