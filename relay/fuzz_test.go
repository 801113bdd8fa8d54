package relay

import (
	"strings"
	"testing"
)

// FuzzRecipientRouting: a recipient is taken as hosted only when the text
// after its last "@" is one of the hosted domains (case aside), with a
// local part before it and no control characters anywhere: no address
// form smuggles mail for another domain past the relay check.
func FuzzRecipientRouting(f *testing.F) {
	for _, seed := range []string{"user@example.org", "USER@EXAMPLE.ORG", "a@evil.example@example.org", "a@example.org@evil.example",
		"\"a@b\"@example.org", "@example.org", "user@", "user@example.org\r\nRCPT TO:<x@evil.example>", "user%evil.example@example.org",
		"user@example.org.", "user@sub.example.org", "user@[127.0.0.1]", ""} {
		f.Add(seed)
	}
	b := &Backend{Domains: []string{"example.org", "Example.NET"}}
	f.Fuzz(func(t *testing.T, to string) {
		domain, ok := recipientDomain(to)
		if !ok || !b.hosted(domain) {
			return
		}
		if strings.ContainsAny(to, "\r\n\x00") {
			t.Fatalf("%q accepted with a control character", to)
		}
		i := strings.LastIndexByte(to, '@')
		if i <= 0 {
			t.Fatalf("%q accepted without a local part", to)
		}
		after := strings.ToLower(to[i+1:])
		if after != "example.org" && after != "example.net" {
			t.Fatalf("%q accepted for domain %q", to, after)
		}
	})
}
