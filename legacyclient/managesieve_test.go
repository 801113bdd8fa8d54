package legacyclient

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"mailcapture/legacytest"
)

// TestManageSieveAgainstPigeonhole reads a user's scripts from Dovecot's
// ManageSieve (Pigeonhole) after STARTTLS: the names, which one is
// active, and each script's bytes exactly; a wrong password is
// ErrBadCredentials.
func TestManageSieveAgainstPigeonhole(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{TLS: true, Sieve: true})
	d.AddUser(t, "sieve@example.org", "pw")
	lists := []byte("require [\"fileinto\"];\r\n# Ünïcode comment\r\nif header :contains \"List-Id\" \"<dev.lists.example.org>\" {\r\n  fileinto \"Lists/dev\";\r\n}\r\n")
	spare := []byte("keep;\n")
	d.PutSieve(t, "sieve@example.org", "lists", lists, true)
	d.PutSieve(t, "sieve@example.org", "spare \"one\"", spare, false)
	ep := Endpoint{Address: d.ManageSieveAddr, TLS: "starttls", TLSConfig: &tls.Config{RootCAs: d.CertPool, ServerName: "127.0.0.1"}, Timeout: 10 * time.Second}
	ctx := context.Background()
	if _, err := LoginManageSieve(ctx, ep, User("sieve@example.org", "wrong")); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("a wrong password: %v, want ErrBadCredentials", err)
	}
	s, err := LoginManageSieve(ctx, ep, User("sieve@example.org", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Capabilities["SIEVE"] == "" {
		t.Fatalf("no SIEVE capability: %v", s.Capabilities)
	}
	scripts, err := s.ListScripts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"lists": true, "spare \"one\"": false}
	if len(scripts) != 2 {
		t.Fatalf("scripts: %+v", scripts)
	}
	for _, sc := range scripts {
		if active, ok := want[sc.Name]; !ok || active != sc.Active {
			t.Fatalf("scripts: %+v", scripts)
		}
		got, err := s.GetScript(ctx, sc.Name)
		if err != nil {
			t.Fatal(err)
		}
		body := map[string][]byte{"lists": lists, "spare \"one\"": spare}[sc.Name]
		if string(got) != string(body) {
			t.Fatalf("script %q: %q, want %q", sc.Name, got, body)
		}
	}
	if _, err := s.GetScript(ctx, "missing"); !errors.Is(err, ErrSieveRefused) {
		t.Fatalf("a missing script: %v, want ErrSieveRefused", err)
	}
}
