package main

import (
	"regexp"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

// seedCapturedAccount records, before serve starts, an account that is
// captured already, with an empty INBOX (mail for it is delivered
// locally).
func seedCapturedAccount(t *testing.T, dataDir, name string) {
	t.Helper()
	seedCapturedAccountWith(t, dataDir, name, store.MailboxSpec{Name: "INBOX"})
}

// seedCapturedAccountFrom is seedCapturedAccount for a user the legacy
// server has, with an empty INBOX: the local INBOX is recorded as the
// copy of it (same UIDVALIDITY), as a capture leaves it, so follow syncs
// find nothing to do.
func seedCapturedAccountFrom(t *testing.T, d *legacytest.Dovecot, dataDir, name, password string) {
	t.Helper()
	v := d.Snapshot(t, name, password)["INBOX"].UIDValidity
	seedCapturedAccountWith(t, dataDir, name, store.MailboxSpec{Name: "INBOX", UIDValidity: v, LegacyUIDValidity: v, Subscribed: true})
}

func seedCapturedAccountWith(t *testing.T, dataDir, name string, inbox store.MailboxSpec) {
	t.Helper()
	st := storetest.Open(t, dataDir)
	storetest.Account(t, st, name, "pw", store.StateCaptured, inbox)
	st.Close() // serve opens the store next
}

// captureByLogin logs the user in over IMAP through serve (which starts
// the account's capture) and waits for its cut-over.
func captureByLogin(t *testing.T, srv *serveProcess, imapAddr, user, pass string) {
	t.Helper()
	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=` + regexp.QuoteMeta(user)))
}
