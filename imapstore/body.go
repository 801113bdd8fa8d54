package imapstore

import (
	"bufio"
	"bytes"
	"io"
	"net/mail"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/mimeinfo"
	"mailcapture/store"
)

// writeSection writes BODY[section]<partial> from the stored file, cut at
// the offsets found at ingestion. A section that does not exist is empty,
// as RFC 3501 6.4.5 allows.
func (s *Session) writeSection(rw *imapserver.FetchResponseWriter, m store.Message, info *mimeinfo.Message, sec *imap.FetchItemBodySection) error {
	f, err := s.b.Store.OpenBody(m.ID)
	if err != nil {
		return s.internal("fetch", err)
	}
	defer f.Close()
	start, end := sectionBounds(info, m.Size, sec)
	var filtered []byte // the section's bytes when they are not the file's
	if sec.Specifier == imap.PartSpecifierHeader && (len(sec.HeaderFields) > 0 || len(sec.HeaderFieldsNot) > 0) {
		raw := make([]byte, end-start)
		if _, err := f.ReadAt(raw, start); err != nil {
			return s.internal("fetch", err)
		}
		filtered = filterHeader(raw, sec.HeaderFields, sec.HeaderFieldsNot)
		start, end = 0, int64(len(filtered))
	}
	if sec.Partial != nil {
		start = min(start+int64(sec.Partial.Offset), end)
		if sec.Partial.Size > 0 {
			end = min(end, start+int64(sec.Partial.Size))
		}
	}
	w := rw.WriteBodySection(sec, end-start)
	if filtered != nil {
		_, err = w.Write(filtered[start:end])
	} else {
		err = copyRange(w, f, start, end-start)
	}
	if err != nil {
		w.Close()
		return s.internal("fetch", err)
	}
	return w.Close()
}

// copyBuffers hold the bytes of a body on their way from its file to a
// client.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

// copyRange copies n bytes of f from off to w, in reads of at most 64 KiB
// at known offsets: a small message costs one read.
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

// sectionBounds returns the byte range of a section.
func sectionBounds(info *mimeinfo.Message, size int64, sec *imap.FetchItemBodySection) (int64, int64) {
	if wholeMessage(sec) {
		return 0, size
	}
	msg := info
	part := &info.Root
	for i, n := range sec.Part {
		var next *mimeinfo.Part
		switch {
		case len(part.Parts) > 0:
			if n < 1 || n > len(part.Parts) {
				return 0, 0
			}
			next = &part.Parts[n-1]
		case part.Message != nil && i > 0:
			// Inside message/rfc822, part numbers go on into the enclosed
			// message's parts.
			inner := &part.Message.Root
			if len(inner.Parts) > 0 {
				if n < 1 || n > len(inner.Parts) {
					return 0, 0
				}
				next = &inner.Parts[n-1]
			} else if n == 1 {
				next = inner
			}
		case n == 1 && part == &msg.Root:
			next = part // a single-part message's part 1 is its body
		}
		if next == nil {
			return 0, 0
		}
		part = next
	}
	// HEADER and TEXT of a part address its enclosed message.
	target := part
	if len(sec.Part) > 0 && (sec.Specifier == imap.PartSpecifierHeader || sec.Specifier == imap.PartSpecifierText) {
		if part.Message == nil {
			return 0, 0
		}
		target = &part.Message.Root
	}
	switch sec.Specifier {
	case imap.PartSpecifierHeader:
		return target.HeaderStart, target.BodyStart
	case imap.PartSpecifierText:
		return target.BodyStart, target.End
	case imap.PartSpecifierMIME:
		return part.HeaderStart, part.BodyStart
	}
	if len(sec.Part) == 0 {
		return 0, size
	}
	if part == &info.Root {
		return part.BodyStart, part.End
	}
	return part.BodyStart, part.End
}

// filterHeader keeps (or drops) the named fields, with their folded lines,
// and ends with the blank line.
func filterHeader(raw []byte, keep, drop []string) []byte {
	want := func(name string) bool {
		for _, k := range keep {
			if strings.EqualFold(k, name) {
				return true
			}
		}
		if len(keep) > 0 {
			return false
		}
		for _, d := range drop {
			if strings.EqualFold(d, name) {
				return false
			}
		}
		return true
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
				name, _, _ := bytes.Cut(trimmed, []byte(":"))
				taking = want(strings.TrimSpace(string(name)))
				if taking {
					out.Write(line)
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

func envelope(e *mimeinfo.Envelope) *imap.Envelope {
	env := &imap.Envelope{
		Subject: e.Subject, From: addresses(e.From), Sender: addresses(e.Sender), ReplyTo: addresses(e.ReplyTo),
		To: addresses(e.To), Cc: addresses(e.Cc), Bcc: addresses(e.Bcc),
		MessageID: strings.Trim(e.MessageID, "<> "),
	}
	if d, err := mail.ParseDate(e.Date); err == nil {
		env.Date = d
	}
	for _, id := range strings.Fields(e.InReplyTo) {
		env.InReplyTo = append(env.InReplyTo, strings.Trim(id, "<>"))
	}
	return env
}

func addresses(list []mimeinfo.Address) []imap.Address {
	out := make([]imap.Address, len(list))
	for i, a := range list {
		out[i] = imap.Address{Name: a.Name, Mailbox: a.Mailbox, Host: a.Host}
	}
	return out
}

func bodyStructure(p *mimeinfo.Part, extended bool) imap.BodyStructure {
	if len(p.Parts) > 0 {
		mp := &imap.BodyStructureMultiPart{Subtype: p.Subtype}
		for i := range p.Parts {
			mp.Children = append(mp.Children, bodyStructure(&p.Parts[i], extended))
		}
		if extended {
			mp.Extended = &imap.BodyStructureMultiPartExt{Params: p.Params, Disposition: disposition(p), Language: p.Language, Location: p.Location}
		}
		return mp
	}
	sp := &imap.BodyStructureSinglePart{
		Type: p.Type, Subtype: p.Subtype, Params: p.Params, ID: p.ID, Description: p.Description,
		Encoding: p.Encoding, Size: uint32(p.Size()),
	}
	switch {
	case p.Message != nil:
		sp.MessageRFC822 = &imap.BodyStructureMessageRFC822{
			Envelope: envelope(&p.Message.Envelope), BodyStructure: bodyStructure(&p.Message.Root, extended), NumLines: p.Lines,
		}
	case strings.EqualFold(p.Type, "text"):
		sp.Text = &imap.BodyStructureText{NumLines: p.Lines}
	}
	if extended {
		sp.Extended = &imap.BodyStructureSinglePartExt{Disposition: disposition(p), Language: p.Language, Location: p.Location}
	}
	return sp
}

func disposition(p *mimeinfo.Part) *imap.BodyStructureDisposition {
	if p.Disposition == "" {
		return nil
	}
	return &imap.BodyStructureDisposition{Value: p.Disposition, Params: p.DispositionParams}
}
