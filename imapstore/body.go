package imapstore

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"mime/quotedprintable"
	"strconv"
	"strings"
	"sync"

	"mailcapture/imapwire"
	"mailcapture/mimeinfo"
)

// writeSection writes a BODY[...] (RFC 3501 6.4.5), BINARY[...] or
// BINARY.SIZE[...] (RFC 3516) item: bytes cut from the stored file at the
// offsets found at ingestion, never the whole message in memory unless it
// must be filtered or decoded.
func (s *session) writeSection(mi msgInfo, it fetchItem, structure func() (*mimeinfo.Message, error)) error {
	start, end := int64(0), mi.size
	var data []byte // the item's bytes when they are not a range of the file
	whole := len(it.sec.part) == 0 && (it.sec.spec == "" || it.kind != fetchSection)
	if !whole {
		m, err := structure()
		if err != nil {
			return err
		}
		var ok bool
		start, end, ok = sectionRange(m, it.sec)
		if !ok {
			start, end = 0, 0
		}
		switch {
		case it.sec.spec == "HEADER.FIELDS" || it.sec.spec == "HEADER.FIELDS.NOT":
			raw, err := s.readRange(mi, start, end)
			if err != nil {
				return err
			}
			data = filterHeader(raw, it.sec.fields, it.sec.spec == "HEADER.FIELDS")
		case it.kind != fetchSection && ok:
			part := partAt(m, it.sec.part)
			raw, err := s.readRange(mi, start, end)
			if err != nil {
				return err
			}
			data = decodeTransfer(raw, part.Encoding)
		}
	}
	if it.kind == fetchBinarySize {
		n := end - start
		if data != nil {
			n = int64(len(data))
		}
		s.out = append(s.out, it.name...)
		s.out = strconv.AppendInt(append(s.out, ' '), n, 10)
		return nil
	}
	if data != nil {
		start, end = 0, int64(len(data))
	}
	if it.partial {
		start = min(start+int64(it.offset), end)
		end = min(end, start+int64(it.count))
	}
	s.out = append(s.out, it.name...)
	s.out = append(s.out, ' ')
	if data != nil {
		chunk := data[start:end]
		if it.kind == fetchBinary && bytes.IndexByte(chunk, 0) >= 0 {
			s.out = append(s.out, '~') // literal8 (RFC 3516 4.2)
		}
		s.out = imapwire.AppendLiteralHeader(s.out, int64(len(chunk)))
		s.out = append(s.out, chunk...)
		return nil
	}
	s.out = imapwire.AppendLiteralHeader(s.out, end-start)
	if _, err := s.w.Write(s.out); err != nil {
		return err
	}
	s.out = s.out[:0]
	if end == start {
		return nil
	}
	f, err := s.srv.store.OpenBody(mi.id)
	if err != nil {
		return err
	}
	defer f.Close()
	return copyRange(s.w, f, start, end-start)
}

// readRange reads part of a stored body.
func (s *session) readRange(mi msgInfo, start, end int64) ([]byte, error) {
	f, err := s.srv.store.OpenBody(mi.id)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, end-start)
	if _, err := f.ReadAt(buf, start); err != nil && !(err == io.EOF && len(buf) == 0) {
		return nil, err
	}
	return buf, nil
}

// partAt finds the entity a section's part numbers name (RFC 3501 6.4.5):
// a non-multipart message's part 1 is its body; inside a message/rfc822
// the numbers go on into the enclosed message, whose part 1 is itself
// when it is not multipart.
func partAt(m *mimeinfo.Message, path []int) *mimeinfo.Part {
	cur := &m.Root
	for i, n := range path {
		if i > 0 && cur.Message != nil {
			cur = &cur.Message.Root
		}
		switch {
		case len(cur.Parts) > 0:
			if n > len(cur.Parts) {
				return nil
			}
			cur = &cur.Parts[n-1]
		case cur.Type == "multipart":
			return nil
		case n != 1:
			return nil
		}
	}
	return cur
}

// sectionRange returns the byte range of a section; ok is false when the
// message has no such part.
func sectionRange(m *mimeinfo.Message, sec section) (start, end int64, ok bool) {
	if len(sec.part) == 0 {
		switch sec.spec {
		case "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT":
			if sec.spec == "" {
				return m.Root.HeaderStart, m.Root.End, true
			}
			return m.Root.HeaderStart, m.Root.BodyStart, true
		case "TEXT":
			return m.Root.BodyStart, m.Root.End, true
		}
		return 0, 0, false
	}
	p := partAt(m, sec.part)
	if p == nil {
		return 0, 0, false
	}
	switch sec.spec {
	case "":
		return p.BodyStart, p.End, true
	case "MIME":
		if p == &m.Root {
			// The root's "MIME header" is the message header.
			return p.HeaderStart, p.BodyStart, true
		}
		return p.HeaderStart, p.BodyStart, true
	}
	// HEADER and TEXT of a part address its enclosed message.
	if p.Message == nil {
		return 0, 0, false
	}
	inner := &p.Message.Root
	if sec.spec == "TEXT" {
		return inner.BodyStart, inner.End, true
	}
	return inner.HeaderStart, inner.BodyStart, true
}

// filterHeader keeps (keep) or drops the named fields of a header, with
// their folded lines, and ends with the blank line (RFC 3501 6.4.5).
func filterHeader(raw []byte, fields []string, keep bool) []byte {
	want := func(name string) bool {
		for _, f := range fields {
			if strings.EqualFold(f, name) {
				return keep
			}
		}
		return !keep
	}
	var out bytes.Buffer
	r := bufio.NewReader(bytes.NewReader(raw))
	taking := false
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			trimmed := bytes.TrimRight(line, "\r\n")
			switch {
			case len(trimmed) == 0:
			case line[0] == ' ' || line[0] == '\t':
				if taking {
					out.Write(line)
				}
			default:
				name, _, found := bytes.Cut(trimmed, []byte(":"))
				taking = found && want(strings.TrimSpace(string(name)))
				if taking {
					out.Write(line)
					if line[len(line)-1] != '\n' {
						out.WriteString("\r\n")
					}
				}
			}
		}
		if err != nil {
			break
		}
	}
	out.WriteString("\r\n")
	return out.Bytes()
}

// decodeTransfer undoes a part's content transfer encoding (RFC 3516 4.1);
// an encoding that is not base64 or quoted-printable is identity.
func decodeTransfer(raw []byte, encoding string) []byte {
	switch strings.ToLower(encoding) {
	case "base64":
		clean := bytes.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
				return -1
			}
			return r
		}, raw)
		out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
		n, _ := base64.StdEncoding.Decode(out, clean)
		return out[:n]
	case "quoted-printable":
		out, _ := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(raw)))
		return out
	}
	return raw
}

// copyBuffers hold bodies on their way from their files to a client.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

// copyRange copies n bytes of f from off to w by positioned reads of at
// most 64 KiB: a small message costs one read.
func copyRange(w io.Writer, f io.ReaderAt, off, n int64) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for n > 0 {
		chunk := buf[:min(n, int64(len(buf)))]
		got, err := f.ReadAt(chunk, off)
		if got < len(chunk) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		off += int64(got)
		n -= int64(got)
	}
	return nil
}
