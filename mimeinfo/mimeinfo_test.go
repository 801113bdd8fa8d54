package mimeinfo

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func parse(t *testing.T, raw string) *Message {
	t.Helper()
	// OneByteReader proves the parser does not depend on read sizes.
	m, err := Parse(iotest.OneByteReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func body(raw string, p Part) string     { return raw[p.BodyStart:p.End] }
func headerOf(raw string, p Part) string { return raw[p.HeaderStart:p.BodyStart] }

func TestSimpleMessage(t *testing.T) {
	raw := crlf(`From: "Ann Example" <ann@example.org>
To: bob@example.org, Carol <carol@example.net>
Subject: hello
 world
Date: Mon, 2 Jan 2006 15:04:05 -0700
Message-ID: <1@example.org>

line one
line two
`)
	m := parse(t, raw)
	e := m.Envelope
	if e.Subject != "hello world" {
		t.Errorf("subject %q", e.Subject)
	}
	if len(e.From) != 1 || e.From[0] != (Address{Name: "Ann Example", Mailbox: "ann", Host: "example.org"}) {
		t.Errorf("from %+v", e.From)
	}
	if len(e.To) != 2 || e.To[1].Host != "example.net" || e.To[1].Name != "Carol" {
		t.Errorf("to %+v", e.To)
	}
	if len(e.Sender) != 1 || len(e.ReplyTo) != 1 {
		t.Errorf("sender/reply-to must default to from: %+v %+v", e.Sender, e.ReplyTo)
	}
	if e.MessageID != "<1@example.org>" || e.Date != "Mon, 2 Jan 2006 15:04:05 -0700" {
		t.Errorf("envelope %+v", e)
	}
	r := m.Root
	if r.Type != "text" || r.Subtype != "plain" || r.Params["charset"] != "us-ascii" || r.Encoding != "7bit" {
		t.Errorf("defaults not applied: %+v", r)
	}
	if got := body(raw, r); got != "line one\r\nline two\r\n" {
		t.Errorf("body %q", got)
	}
	if r.Lines != 2 || r.End != int64(len(raw)) {
		t.Errorf("lines %d end %d len %d", r.Lines, r.End, len(raw))
	}
}

const nested = `From: a@example.org
Content-Type: multipart/mixed; boundary="outer"

preamble
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8

plain text
--inner
Content-Type: text/html

<p>html</p>
--inner--
--outer
Content-Type: message/rfc822
Content-Disposition: attachment; filename="fwd.eml"

Subject: forwarded
From: x@example.net

forwarded body
--outer
Content-Type: application/octet-stream; name=x.bin
Content-Transfer-Encoding: base64

AAAA
--outer--
epilogue
`

func TestNestedMultipartOffsets(t *testing.T) {
	for _, variant := range []struct{ name, raw string }{{"crlf", crlf(nested)}, {"bare lf", nested}} {
		t.Run(variant.name, func(t *testing.T) {
			raw := variant.raw
			nl := "\r\n"
			if variant.name == "bare lf" {
				nl = "\n"
			}
			m := parse(t, raw)
			r := m.Root
			if r.Type != "multipart" || r.Subtype != "mixed" || len(r.Parts) != 3 {
				t.Fatalf("root %s/%s with %d parts", r.Type, r.Subtype, len(r.Parts))
			}
			if r.End != int64(len(raw)) {
				t.Errorf("root end %d, want %d", r.End, len(raw))
			}
			alt := r.Parts[0]
			if alt.Subtype != "alternative" || len(alt.Parts) != 2 {
				t.Fatalf("alternative: %+v", alt)
			}
			if got := body(raw, alt.Parts[0]); got != "plain text" {
				t.Errorf("plain body %q", got)
			}
			if alt.Parts[0].Params["charset"] != "utf-8" || alt.Parts[0].Lines != 0 {
				t.Errorf("plain part %+v", alt.Parts[0])
			}
			if got := headerOf(raw, alt.Parts[1]); got != "Content-Type: text/html"+nl+nl {
				t.Errorf("html header %q", got)
			}
			if got := body(raw, alt.Parts[1]); got != "<p>html</p>" {
				t.Errorf("html body %q", got)
			}
			fwd := r.Parts[1]
			if fwd.Message == nil || fwd.Message.Envelope.Subject != "forwarded" || fwd.Disposition != "attachment" || fwd.DispositionParams["filename"] != "fwd.eml" {
				t.Fatalf("message/rfc822 part %+v", fwd)
			}
			if got := body(raw, fwd.Message.Root); got != "forwarded body" {
				t.Errorf("forwarded body %q", got)
			}
			if got := body(raw, fwd); !strings.HasPrefix(got, "Subject: forwarded") || !strings.HasSuffix(got, "forwarded body") {
				t.Errorf("rfc822 part body %q", got)
			}
			if fwd.Lines != 3 {
				t.Errorf("rfc822 lines %d, want 3", fwd.Lines)
			}
			bin := r.Parts[2]
			if bin.Type != "application" || bin.Encoding != "base64" || body(raw, bin) != "AAAA" || bin.Params["name"] != "x.bin" {
				t.Errorf("binary part %+v body %q", bin, body(raw, bin))
			}
		})
	}
}

func TestMalformedInputNeverFails(t *testing.T) {
	cases := map[string]string{
		"empty":                "",
		"no header end":        "Subject: x",
		"garbage header":       "this is not a header\r\n\x00\xff\r\n\r\nbody",
		"bad content type":     "Content-Type: ;;;\r\n\r\nbody",
		"multipart no bound":   "Content-Type: multipart/mixed\r\n\r\nbody",
		"unclosed multipart":   "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart",
		"8bit":                 "Subject: caf\xc3\xa9\r\n\r\n\xe9t\xe9\r\n",
		"bad address":          "From: <<<@@@>>>, ,\r\nTo: \"unterminated\r\n\r\n",
		"deep nesting":         strings.Repeat("Content-Type: message/rfc822\r\n\r\n", 100) + "end",
		"header only newlines": "\n\n\n",
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			m := parse(t, raw)
			if m.Root.End != int64(len(raw)) || m.Root.BodyStart > m.Root.End {
				t.Errorf("root spans [%d,%d), message has %d bytes", m.Root.BodyStart, m.Root.End, len(raw))
			}
			checkBounds(t, &m.Root, int64(len(raw)))
		})
	}
}

func checkBounds(t *testing.T, p *Part, size int64) {
	t.Helper()
	if !(0 <= p.HeaderStart && p.HeaderStart <= p.BodyStart && p.BodyStart <= p.End && p.End <= size) {
		t.Fatalf("part offsets out of order: %d %d %d (size %d)", p.HeaderStart, p.BodyStart, p.End, size)
	}
	for i := range p.Parts {
		checkBounds(t, &p.Parts[i], size)
	}
	if p.Message != nil {
		checkBounds(t, &p.Message.Root, size)
	}
}

func TestLongLinesKeepOffsets(t *testing.T) {
	long := strings.Repeat("x", 3*maxLineBuffer+17)
	raw := "Subject: " + long + "\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + long + "\r\n--b--\r\n"
	m := parse(t, raw)
	if len(m.Root.Parts) != 1 {
		t.Fatalf("parts %d", len(m.Root.Parts))
	}
	if got := body(raw, m.Root.Parts[0]); got != long {
		t.Errorf("long body has %d bytes, want %d", len(got), len(long))
	}
	if len(m.Envelope.Subject) != maxFieldLen {
		t.Errorf("subject kept %d bytes, want the %d-byte cap", len(m.Envelope.Subject), maxFieldLen)
	}
}

// Names are kept as they are written, encoded words and 8-bit bytes
// alike, as Dovecot's ENVELOPE gives them.
func TestNamesKeptAsWritten(t *testing.T) {
	m := parse(t, "From: =?iso-8859-1?q?J=F6rg?= <j@example.org>\r\nTo: Jörg <k@example.org>\r\n\r\n")
	if n := m.Envelope.To[0].Name; n != "Jörg" {
		t.Errorf("to name %q", n)
	}
	if n := m.Envelope.From[0].Name; n != "=?iso-8859-1?q?J=F6rg?=" {
		t.Errorf("from name %q", n)
	}
	if !bytes.Equal([]byte(m.Envelope.From[0].Mailbox), []byte("j")) {
		t.Errorf("from %+v", m.Envelope.From)
	}
}

// A body nothing encloses is skipped in whole buffers; its end and line
// count must be those the line-by-line scan gives, however the input is
// cut.
func TestSinglePartBodyCountedInBulk(t *testing.T) {
	long := strings.Repeat("y", 2*maxLineBuffer+5)
	bodies := []string{"", "x", "\r\n", "one\r\ntwo\r\n", "one\nbare\r\n" + long + "\r\nend", long + "\r\n" + long + "\n"}
	for _, b := range bodies {
		raw := "Subject: s\r\nContent-Type: text/plain\r\n\r\n" + b
		want := int64(strings.Count(b, "\n"))
		readers := map[string]func() *Message{
			"whole": func() *Message { return parse(t, raw) },
			"one byte": func() *Message {
				m, err := Parse(iotest.OneByteReader(strings.NewReader(raw)))
				if err != nil {
					t.Fatal(err)
				}
				return m
			},
			"halves": func() *Message {
				m, err := Parse(iotest.HalfReader(strings.NewReader(raw)))
				if err != nil {
					t.Fatal(err)
				}
				return m
			},
		}
		for name, read := range readers {
			m := read()
			if m.Root.End != int64(len(raw)) || m.Root.Lines != want || body(raw, m.Root) != b {
				t.Errorf("%s, %d-byte body: end %d lines %d, want %d and %d", name, len(b), m.Root.End, m.Root.Lines, len(raw), want)
			}
		}
	}
}

func TestReadErrorInBodyIsReturned(t *testing.T) {
	raw := "Subject: s\r\n\r\n" + strings.Repeat("body line\r\n", 20000)
	r := io.MultiReader(strings.NewReader(raw), iotest.ErrReader(errBroken))
	if _, err := Parse(r); !errors.Is(err, errBroken) {
		t.Fatalf("Parse = %v, want the read error", err)
	}
}

var errBroken = errors.New("connection broken")

// TestTraceAddresses: the delivery trace fields above the first Received
// field are read; the same fields lower down (a sender may write them)
// and in an enclosed message are not.
func TestTraceAddresses(t *testing.T) {
	msg := "Return-Path: <a@example.net>\r\nX-Original-To: robert@example.org\r\nDelivered-To: <bob@example.org>\r\n" +
		"Received: from mx by legacy with ESMTP\r\nDelivered-To: forged@example.org\r\nSubject: hi\r\n" +
		"Content-Type: message/rfc822\r\n\r\nDelivered-To: inner@example.org\r\nSubject: inner\r\n\r\nbody\r\n"
	m, err := Parse(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"robert@example.org", "bob@example.org"}; !reflect.DeepEqual(m.Trace, want) {
		t.Fatalf("trace %v, want %v", m.Trace, want)
	}
	m, _ = Parse(strings.NewReader("Received: from x\r\nDelivered-To: late@example.org\r\n\r\nbody\r\n"))
	if len(m.Trace) != 0 {
		t.Fatalf("trace below the first Received: %v", m.Trace)
	}
}
