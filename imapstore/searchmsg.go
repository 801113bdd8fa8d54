package imapstore

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"mailcapture/mimeinfo"
)

// searchMsg is one message under a search: metadata at hand, content read
// when a key needs it and dropped after.
type searchMsg struct {
	s    *session
	seq  uint32
	info *msgInfo // in the walk's chunk

	headerRead bool
	header     []byte              // the raw header section
	fields     map[string][]string // unfolded values by lower-case name
	bodyRead   bool
	body       string // text of the body, decoded, lower case
}

func (m *searchMsg) release() {
	m.headerRead, m.header, m.fields, m.bodyRead, m.body = false, nil, nil, false, ""
}

func (m *searchMsg) match(k *searchKey) (bool, error) {
	v := m.s.sel
	switch k.op {
	case opAll:
		return true, nil
	case opAnd:
		// Keys that read nothing first: they may decide alone.
		for pass := 0; pass < 2; pass++ {
			for _, kid := range k.kids {
				if kid.content != (pass == 1) {
					continue
				}
				ok, err := m.match(kid)
				if err != nil || !ok {
					return false, err
				}
			}
		}
		return true, nil
	case opOr:
		for _, kid := range k.kids {
			ok, err := m.match(kid)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case opNot:
		ok, err := m.match(k.kids[0])
		return !ok, err
	case opSeq:
		return k.resolved.Contains(m.seq), nil
	case opUID:
		return k.resolved.Contains(m.info.uid), nil
	case opFlag:
		return hasFlag(m.info.flags, k.flag), nil
	case opRecent:
		return v.recent[m.info.uid], nil
	case opLarger:
		return m.info.size > k.n, nil
	case opSmaller:
		return m.info.size < k.n, nil
	case opBefore:
		return sameDay(m.info.date, k.date) < 0, nil
	case opOn:
		return sameDay(m.info.date, k.date) == 0, nil
	case opSince:
		return sameDay(m.info.date, k.date) >= 0, nil
	case opSentBefore, opSentOn, opSentSince:
		d, err := m.sentDate()
		if err != nil {
			return false, err
		}
		c := sameDay(d, k.date)
		return k.op == opSentBefore && c < 0 || k.op == opSentOn && c == 0 || k.op == opSentSince && c >= 0, nil
	case opHeader:
		if err := m.readHeader(); err != nil {
			return false, err
		}
		values, ok := m.fields[k.field]
		if !ok {
			return false, nil
		}
		if k.value == "" {
			return true, nil
		}
		needle := strings.ToLower(k.value)
		for _, val := range values {
			if strings.Contains(strings.ToLower(decodeWords(val)), needle) || strings.Contains(strings.ToLower(val), needle) {
				return true, nil
			}
		}
		return false, nil
	case opAddress:
		if err := m.readHeader(); err != nil {
			return false, err
		}
		needle := strings.ToLower(k.value)
		for _, val := range m.fields[k.field] {
			if k.value == "" || addressesContain(val, needle) {
				return true, nil
			}
		}
		return false, nil
	case opBody, opText:
		needle := strings.ToLower(k.value)
		if k.op == opText {
			if err := m.readHeader(); err != nil {
				return false, err
			}
			if strings.Contains(strings.ToLower(decodeWords(string(m.header))), needle) {
				return true, nil
			}
		}
		if err := m.readBody(); err != nil {
			return false, err
		}
		return strings.Contains(m.body, needle), nil
	}
	return false, nil
}

// addressesContain matches an address field the way clients mean it:
// against each address's name (decoded) and mailbox@host, and a group's
// name, whatever comments or routes the header holds.
func addressesContain(value, needle string) bool {
	for _, a := range mimeinfo.ParseAddressList(value) {
		forms := []string{decodeWords(a.Name), a.Mailbox}
		if !a.Group {
			forms = append(forms, a.Mailbox+"@"+a.Host)
			if a.Name != "" {
				forms = append(forms, decodeWords(a.Name)+" <"+a.Mailbox+"@"+a.Host+">")
			}
		}
		for _, f := range forms {
			if f != "" && strings.Contains(strings.ToLower(f), needle) {
				return true
			}
		}
	}
	return false
}

// maxSearchHeader bounds the header read for a search.
const maxSearchHeader = 1 << 20

// readHeader reads the message's header section and unfolds its fields.
func (m *searchMsg) readHeader() error {
	if m.headerRead {
		return nil
	}
	m.headerRead = true
	f, err := m.s.srv.store.OpenBody(m.info.id)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(io.LimitReader(f, maxSearchHeader))
	var header bytes.Buffer
	m.fields = map[string][]string{}
	var name string
	var val strings.Builder
	flush := func() {
		if name != "" {
			m.fields[name] = append(m.fields[name], strings.TrimSpace(val.String()))
		}
		name = ""
		val.Reset()
	}
	for {
		line, err := br.ReadString('\n')
		trimmed := strings.TrimRight(line, "\r\n")
		if trimmed == "" {
			header.WriteString(line)
			break
		}
		header.WriteString(line)
		if trimmed[0] == ' ' || trimmed[0] == '\t' {
			if name != "" {
				val.WriteString(trimmed)
			}
		} else {
			flush()
			if colon := strings.IndexByte(trimmed, ':'); colon > 0 {
				name = strings.ToLower(strings.TrimSpace(trimmed[:colon]))
				val.WriteString(trimmed[colon+1:])
			}
		}
		if err != nil {
			break
		}
	}
	flush()
	m.header = header.Bytes()
	return nil
}

// sentDate is the Date header's date in its own zone; without one that
// can be read, the start of 1970, as Dovecot takes it.
func (m *searchMsg) sentDate() (time.Time, error) {
	if err := m.readHeader(); err != nil {
		return time.Time{}, err
	}
	if vals := m.fields["date"]; len(vals) > 0 {
		if d, err := mail.ParseDate(vals[0]); err == nil {
			return d, nil
		}
	}
	return time.Unix(0, 0).UTC(), nil
}

// maxSearchBody bounds the decoded text a search reads of one message.
const maxSearchBody = 16 << 20

// readBody reads the text of the message's body: each text part (or the
// whole body of a message that is not MIME) with its transfer encoding
// undone, in lower case.
func (m *searchMsg) readBody() error {
	if m.bodyRead {
		return nil
	}
	m.bodyRead = true
	ctx, cancel := m.s.opCtx()
	defer cancel()
	st, err := m.s.srv.store.Structure(ctx, m.info.id)
	if err != nil {
		return err
	}
	f, err := m.s.srv.store.OpenBody(m.info.id)
	if err != nil {
		return err
	}
	defer f.Close()
	var b strings.Builder
	var walk func(p *mimeinfo.Part) error
	walk = func(p *mimeinfo.Part) error {
		if b.Len() > maxSearchBody {
			return nil
		}
		switch {
		case len(p.Parts) > 0:
			for i := range p.Parts {
				if err := walk(&p.Parts[i]); err != nil {
					return err
				}
			}
		case p.Message != nil:
			return walk(&p.Message.Root)
		case p.Type == "text" || p.Type == "":
			n := min(p.End-p.BodyStart, maxSearchBody)
			raw := make([]byte, n)
			if _, err := f.ReadAt(raw, p.BodyStart); err != nil && err != io.EOF {
				return err
			}
			text := decodeTransfer(raw, p.Encoding)
			b.WriteString(toUTF8(text, p.Params["charset"]))
			b.WriteByte('\n')
		}
		return nil
	}
	if err := walk(&st.Root); err != nil {
		return err
	}
	m.body = strings.ToLower(b.String())
	return nil
}

// toUTF8 converts text in charset to UTF-8, for the charsets mail uses
// most; others are searched as they are.
func toUTF8(b []byte, charset string) string {
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1", "windows-1252", "us-ascii":
		if utf8.Valid(b) {
			return string(b)
		}
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		return string(r)
	}
	return string(b)
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
	b, err := io.ReadAll(input)
	if err != nil {
		return nil, err
	}
	return strings.NewReader(toUTF8(b, charset)), nil
}}

// decodeWords decodes RFC 2047 encoded words; what cannot be decoded is
// kept.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}
