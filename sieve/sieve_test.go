package sieve

import (
	"context"
	"net/textproto"
	"strings"
	"testing"
)

func message(header string, body string) Message {
	h := textproto.MIMEHeader{}
	for _, line := range strings.Split(strings.TrimSpace(header), "\n") {
		k, v, _ := strings.Cut(line, ":")
		h.Add(k, strings.TrimSpace(v))
	}
	raw := []byte(strings.ReplaceAll(strings.TrimSpace(header), "\n", "\r\n") + "\r\n\r\n" + body)
	return Message{Header: h, Size: len(raw), Raw: raw}
}

func TestOutcomes(t *testing.T) {
	const script = `require ["fileinto", "imap4flags", "vacation", "variables", "envelope", "subaddress", "copy", "body", "relational", "reject"];
if header :contains "List-Id" "dev.lists.example.org" { fileinto :flags "\\Seen" "Lists/dev"; stop; }
if envelope :detail "to" "tag" { fileinto "Tagged"; }
if header :contains "X-Spam-Flag" "YES" { discard; stop; }
if body :contains "forward me" { redirect :copy "other@example.net"; }
if size :over 100K { reject "too big"; stop; }
if header :matches "Subject" "*" { set "subj" "${1}"; }
addflag "$Filtered";
vacation :days 3 :subject "Re: ${subj}" :addresses ["alias@example.org"] "I am away.";
`
	s, err := Compile([]byte(script), "+")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name, header, body, to string
		check                  func(Outcome) bool
	}{
		{"list", "From: a@example.net\nList-Id: <dev.lists.example.org>\nSubject: l", "x", "u@example.org",
			func(o Outcome) bool {
				return !o.Keep && len(o.FileInto) == 1 && o.FileInto[0].Mailbox == "Lists/dev" && o.FileInto[0].Flags[0] == `\Seen` && o.Vacation == nil
			}},
		{"tag", "From: a@example.net\nSubject: t", "x", "u+tag@example.org",
			func(o Outcome) bool {
				return !o.Keep && len(o.FileInto) == 1 && o.FileInto[0].Mailbox == "Tagged" && o.Vacation != nil && o.Vacation.Subject == "Re: t"
			}},
		{"spam", "From: a@example.net\nX-Spam-Flag: YES", "x", "u@example.org",
			func(o Outcome) bool { return !o.Keep && len(o.FileInto) == 0 && o.Vacation == nil }},
		{"redirect", "From: a@example.net\nSubject: hello", "please forward me", "u@example.org",
			func(o Outcome) bool {
				return o.Keep && len(o.Redirects) == 1 && o.Redirects[0] == "other@example.net" && o.KeepFlags[0] == "$Filtered" &&
					o.Vacation != nil && o.Vacation.Days == 3 && o.Vacation.Reason == "I am away." && o.Vacation.Addresses[0] == "alias@example.org"
			}},
		{"big", "From: a@example.net\nSubject: big", strings.Repeat("x", 200000), "u@example.org",
			func(o Outcome) bool { return o.Reject == "too big" && !o.Keep }},
	}
	for _, c := range cases {
		o, err := s.Run(ctx, Envelope{From: "a@example.net", To: c.to}, message(c.header, c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !c.check(o) {
			t.Errorf("%s: %+v (vacation %+v)", c.name, o, o.Vacation)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, src := range []string{
		`fileinto "x";`, // no require
		`require "vacation"; vacation :days "x" "r";`, // :days needs a number
		`require "vacation"; vacation :days 1;`,       // no reason
		`if true {`,                                   // unbalanced
		`require "frobnicate";`,
	} {
		if _, err := Compile([]byte(src), "+"); err == nil {
			t.Errorf("%q compiled", src)
		}
	}
}
