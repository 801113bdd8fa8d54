package capture

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
)

// TestTLSModes captures over STARTTLS, implicit TLS and POP3 STLS against
// a Dovecot with a self-signed certificate: verification refuses the
// unknown certificate by default and accepts it once it is trusted.
func TestTLSModes(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{TLS: true})
	d.AddUser(t, user, password)
	d.Populate(t, user, password, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(40, 5, 3000)}})
	trusted := &tls.Config{RootCAs: d.CertPool, ServerName: "legacy.test", MinVersion: tls.VersionTLS12}
	untrusted := &tls.Config{ServerName: "legacy.test", MinVersion: tls.VersionTLS12}
	cases := []struct {
		name string
		imap legacyclient.Endpoint
		pop3 legacyclient.Endpoint
	}{
		{name: "imap starttls", imap: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "starttls"}},
		{name: "imap implicit", imap: legacyclient.Endpoint{Address: d.IMAPSAddr, TLS: "implicit"}},
		{name: "pop3 stls", pop3: legacyclient.Endpoint{Address: d.POP3Addr, TLS: "starttls"}},
		{name: "pop3 implicit", pop3: legacyclient.Endpoint{Address: d.POP3SAddr, TLS: "implicit"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			st.CreateAccount(ctx, user, password, store.StateCapturing)
			e := &Engine{Store: st, IMAP: tc.imap, POP3: tc.pop3}
			for _, ep := range []*legacyclient.Endpoint{&e.IMAP, &e.POP3} {
				ep.Timeout, ep.TLSConfig = 10*time.Second, untrusted
			}
			_, err := e.Pass(ctx, user, password)
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("unknown certificate accepted: %v", err)
			}
			if errors.Is(err, legacyclient.ErrBadCredentials) {
				t.Fatalf("a certificate failure reported as bad credentials: %v", err)
			}
			e.IMAP.TLSConfig, e.POP3.TLSConfig = trusted, trusted
			res, err := e.Pass(ctx, user, password)
			if err != nil || res.Added != 5 {
				t.Fatalf("trusted certificate: %+v %v", res, err)
			}
		})
	}
}
