package sieve

import (
	"context"
	"net/textproto"
	"testing"
)

// FuzzCompile: any script a user uploads compiles or is refused with an
// error, and one that compiles runs without a panic.
func FuzzCompile(f *testing.F) {
	for _, seed := range []string{
		`require ["fileinto", "vacation", "variables"]; if header :matches "Subject" "*" { set "s" "${1}"; } vacation :days 2 :subject "Re: ${s}" "away";`,
		`require "envelope"; if envelope :all :is "from" "a@b" { discard; stop; } keep;`,
		`if anyof (size :over 1K, not exists "X") { redirect "x@y"; }`,
		`require ["vacation"]; vacation :addresses ["a", "b"] :handle "h" :mime text:
Content-Type: text/plain

away
.
;`,
		`require ["body", "imap4flags"]; if body :raw :contains "x" { addflag "\\Seen"; }`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := Compile(src, "+")
		if err != nil {
			return
		}
		msg := Message{Header: textproto.MIMEHeader{"Subject": {"hello"}, "From": {"a@example.net"}}, Size: 40,
			Raw: []byte("Subject: hello\r\nFrom: a@example.net\r\n\r\nbody\r\n")}
		s.Run(context.Background(), Envelope{From: "a@example.net", To: "u+x@example.org"}, msg)
	})
}
