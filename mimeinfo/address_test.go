package mimeinfo

import (
	"reflect"
	"testing"
)

func TestAddressForms(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Address
	}{
		{"user@domain", []Address{{Mailbox: "user", Host: "domain"}}},
		{"From Real <fromuser@fromdomain.org>", []Address{{Name: "From Real", Mailbox: "fromuser", Host: "fromdomain.org"}}},
		{`"Real, Name" <a@b.c>`, []Address{{Name: "Real, Name", Mailbox: "a", Host: "b.c"}}},
		{"user@domain (Real Name)", []Address{{Name: "Real Name", Mailbox: "user", Host: "domain"}}},
		{"<user-from (comment)@ (comment) domain.org>", []Address{{Mailbox: "user-from", Host: "domain.org"}}},
		{"<@route:user@domain>", []Address{{Route: "@route", Mailbox: "user", Host: "domain"}}},
		{"<@a,@b:user@domain>", []Address{{Route: "@a,@b", Mailbox: "user", Host: "domain"}}},
		{"first.last@example.org", []Address{{Mailbox: "first.last", Host: "example.org"}}},
		{"a@b, , c@d", []Address{{Mailbox: "a", Host: "b"}, {Mailbox: "c", Host: "d"}}},
		{"undisclosed-recipients:;", []Address{{Group: true, Mailbox: "undisclosed-recipients"}, {Group: true}}},
		{"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;", []Address{
			{Group: true, Mailbox: "group"}, {Mailbox: "g1", Host: "d1.org"}, {Mailbox: "g2", Host: "d2.org"}, {Group: true},
			{Group: true, Mailbox: "group2"}, {Mailbox: "g3", Host: "d3.org"}, {Group: true}}},
		{"nodomain", []Address{{Mailbox: "nodomain"}}},
		{"", nil},
	} {
		if got := ParseAddressList(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestEmptySenderDefaultsToFrom(t *testing.T) {
	m := parse(t, "From: user@domain (Real Name)\r\nSender: \r\nReply-To: \r\n\r\nbody\r\n")
	want := []Address{{Name: "Real Name", Mailbox: "user", Host: "domain"}}
	if !reflect.DeepEqual(m.Envelope.Sender, want) || !reflect.DeepEqual(m.Envelope.ReplyTo, want) {
		t.Errorf("sender %+v reply-to %+v", m.Envelope.Sender, m.Envelope.ReplyTo)
	}
}

// RFC 2046 5.1.5: in a multipart/digest a part without a Content-Type is
// a message/rfc822.
func TestDigestPartsAreMessages(t *testing.T) {
	raw := crlf(`Content-Type: multipart/digest; boundary="foo"

prologue

--foo 

From: m1@example.com
Subject: m1

m1 body

--foo 
X-Mime: m2 header

From: m2@example.com
Subject: m2

m2 body

--foo--

epilogue
`)
	m := parse(t, raw)
	if len(m.Root.Parts) != 2 {
		t.Fatalf("%d parts", len(m.Root.Parts))
	}
	for i, p := range m.Root.Parts {
		if p.Type != "message" || p.Subtype != "rfc822" || p.Message == nil {
			t.Fatalf("part %d: %s/%s", i+1, p.Type, p.Subtype)
		}
	}
	p2 := m.Root.Parts[1]
	if got := headerOf(raw, p2); got != "X-Mime: m2 header\r\n\r\n" {
		t.Errorf("part 2 MIME header %q", got)
	}
	if got := headerOf(raw, p2.Message.Root); got != "From: m2@example.com\r\nSubject: m2\r\n\r\n" {
		t.Errorf("part 2 message header %q", got)
	}
	if got := body(raw, p2.Message.Root); got != "m2 body\r\n" {
		t.Errorf("part 2 message body %q", got)
	}
	if s := p2.Message.Envelope.Subject; s != "m2" {
		t.Errorf("part 2 subject %q", s)
	}
}
