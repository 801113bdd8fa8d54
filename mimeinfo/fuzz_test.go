package mimeinfo

import (
	"bytes"
	"testing"
)

// FuzzParse: any bytes parse without a panic, and every part's offsets lie
// within the message, in order.
func FuzzParse(f *testing.F) {
	f.Add([]byte("Subject: hi\r\n\r\nbody\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntwo\r\n--b--\r\n"))
	f.Add([]byte("From: \"a\" <a@b>, (c) d@e\nTo: undisclosed-recipients:;\n\nbare LF\n"))
	f.Add([]byte("Content-Type: multipart/alternative; boundary=\"x\"\r\n\r\n--x\r\n--x\r\n\r\n--x--"))
	f.Add([]byte("\xff\xfe: \x00\r\n folded\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		msg, err := Parse(bytes.NewReader(raw))
		if err != nil {
			return
		}
		size := int64(len(raw))
		var check func(p *Part, depth int)
		check = func(p *Part, depth int) {
			if depth > 200 {
				t.Fatalf("nesting deeper than 200")
			}
			if p.HeaderStart < 0 || p.HeaderStart > p.BodyStart || p.BodyStart > p.End || p.End > size {
				t.Fatalf("part offsets %d/%d/%d outside a %d-byte message", p.HeaderStart, p.BodyStart, p.End, size)
			}
			for i := range p.Parts {
				check(&p.Parts[i], depth+1)
			}
			if p.Message != nil {
				check(&p.Message.Root, depth+1)
			}
		}
		check(&msg.Root, 0)
	})
}
