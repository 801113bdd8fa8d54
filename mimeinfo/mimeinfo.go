// Package mimeinfo reads a message once, as a stream, and returns what an
// IMAP server needs to answer ENVELOPE, BODYSTRUCTURE and BODY[section]
// without reading the message again: the envelope fields and the MIME tree
// with the byte offsets of every part's header and body.
//
// It never fails on malformed input: whatever the bytes, it returns a
// structure (RFC 2045 defaults where headers are missing or broken), and
// its memory use is bounded whatever the message size.
package mimeinfo

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"strings"
	"sync"
)

// Limits on what is kept in memory while parsing.
const (
	maxFieldLen   = 16 * 1024 // longest header value kept
	maxDepth      = 32        // deepest MIME nesting followed
	maxParts      = 1000      // most parts described in one message
	maxLineBuffer = 64 * 1024 // bufio buffer; longer lines are read in pieces
)

// Version is the version of what Parse returns: a structure cached with
// an older one is to be parsed again.
const Version = 2

// Message is a parsed message: its envelope and its MIME structure.
type Message struct {
	// V is the Version that produced it (0: before versions were kept).
	V        int      `json:"v,omitempty"`
	Envelope Envelope `json:"env"`
	Root     Part     `json:"root"`
	// Trace are the addresses of the delivery trace fields (Delivered-To,
	// X-Original-To, Envelope-To) at the top of the message, above its
	// first Received field: what the last MTA and delivery agent added.
	// Fields further down could have been written by the sender and are
	// not read. Not kept with the structure.
	Trace []string `json:"-"`
}

// Envelope holds the RFC 3501 ENVELOPE fields. Strings are as they stand in
// the header (unfolded, encoded-words kept), as IMAP servers return them.
type Envelope struct {
	Date      string    `json:"date,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	From      []Address `json:"from,omitempty"`
	Sender    []Address `json:"sender,omitempty"`
	ReplyTo   []Address `json:"replyTo,omitempty"`
	To        []Address `json:"to,omitempty"`
	Cc        []Address `json:"cc,omitempty"`
	Bcc       []Address `json:"bcc,omitempty"`
	InReplyTo string    `json:"inReplyTo,omitempty"`
	MessageID string    `json:"messageId,omitempty"`
}

// Part is one MIME entity. Offsets are absolute in the message: the header
// spans [HeaderStart, BodyStart) including the blank line, the body
// [BodyStart, End).
type Part struct {
	HeaderStart int64 `json:"hs"`
	BodyStart   int64 `json:"bs"`
	End         int64 `json:"end"`
	// Lines counts the body's line ends.
	Lines int64 `json:"lines"`

	Type              string            `json:"type"`
	Subtype           string            `json:"subtype"`
	Params            map[string]string `json:"params,omitempty"`
	ID                string            `json:"id,omitempty"`
	Description       string            `json:"desc,omitempty"`
	Encoding          string            `json:"enc,omitempty"`
	MD5               string            `json:"md5,omitempty"`
	Disposition       string            `json:"disp,omitempty"`
	DispositionParams map[string]string `json:"dispParams,omitempty"`
	Language          []string          `json:"lang,omitempty"`
	Location          string            `json:"loc,omitempty"`

	// Parts holds the children of a multipart entity.
	Parts []Part `json:"parts,omitempty"`
	// Message is the enclosed message of a message/rfc822 entity.
	Message *Message `json:"msg,omitempty"`
}

// Size is the body's size in bytes.
func (p *Part) Size() int64 { return p.End - p.BodyStart }

// readers recycles the line buffers: one message after another would
// otherwise allocate 64 KiB each.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, maxLineBuffer) }}

// Parse reads r to its end and describes the message. The error is only
// ever a read error from r.
func Parse(r io.Reader) (*Message, error) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	s := &scanner{r: br, atLineStart: true}
	if err := s.advance(); err != nil {
		return nil, err
	}
	m := Message{V: Version}
	p := &parser{s: s, trace: &m.Trace}
	if err := p.entity(&m.Root, &m.Envelope, nil, 0, false); err != nil {
		return nil, err
	}
	return &m, nil
}

type parser struct {
	s     *scanner
	parts int
	trace *[]string // the top-level header's trace addresses, until read
}

// entity parses one MIME entity starting at the current line and stops at
// the end of input or at a line that is a delimiter of one of the enclosing
// boundaries, which it leaves unconsumed for the enclosing multipart. In a
// multipart/digest (inDigest), an entity without a Content-Type is a
// message/rfc822 (RFC 2046 5.1.5).
func (p *parser) entity(part *Part, env *Envelope, bounds []string, depth int, inDigest bool) error {
	s := p.s
	p.parts++
	part.HeaderStart = s.off
	h := header{trace: p.trace}
	p.trace = nil // only the message's own header
	for !s.eof {
		if s.curAtLineStart {
			if isBlank(s.cur) {
				if err := s.consume(); err != nil {
					return err
				}
				break
			}
			if delimiterOf(s.cur, bounds) >= 0 {
				break
			}
		}
		h.addLine(s.cur, s.curAtLineStart)
		if err := s.consume(); err != nil {
			return err
		}
	}
	part.BodyStart = s.off
	bodyLines := s.lines
	h.flush()
	if env != nil {
		*env = h.envelope()
	}
	h.describe(part, inDigest)

	var err error
	switch {
	case part.Type == "multipart" && depth < maxDepth && p.parts < maxParts:
		err = p.multipart(part, bounds, depth)
	case part.Type == "message" && (part.Subtype == "rfc822" || part.Subtype == "global") &&
		depth < maxDepth && p.parts < maxParts && !s.eof && delimiterOf(s.cur, bounds) < 0:
		part.Message = &Message{}
		err = p.entity(&part.Message.Root, &part.Message.Envelope, bounds, depth+1, false)
	default:
		err = p.skipTo(bounds)
	}
	if err != nil {
		return err
	}
	part.End, part.Lines = p.bodyEnd(part.BodyStart, bodyLines, bounds)
	return nil
}

// skipTo consumes lines up to a delimiter of bounds or the end of input.
func (p *parser) skipTo(bounds []string) error {
	s := p.s
	if len(bounds) == 0 {
		return s.skipToEnd()
	}
	for !s.eof && !(s.curAtLineStart && delimiterOf(s.cur, bounds) >= 0) {
		if err := s.consume(); err != nil {
			return err
		}
	}
	return nil
}

// bodyEnd returns the end offset and line count of a body that started at
// bodyStart (with linesAtStart lines consumed before it). RFC 2046 5.1.1:
// the line break before a delimiter belongs to the delimiter.
func (p *parser) bodyEnd(bodyStart, linesAtStart int64, bounds []string) (end, lines int64) {
	s := p.s
	end, lines = s.off, s.lines-linesAtStart
	if !s.eof && len(bounds) > 0 && s.prevEOL > 0 && end-int64(s.prevEOL) >= bodyStart {
		end -= int64(s.prevEOL)
		lines--
	}
	return end, lines
}

func (p *parser) multipart(part *Part, bounds []string, depth int) error {
	s := p.s
	boundary := part.Params["boundary"]
	inner := append(append(make([]string, 0, len(bounds)+1), bounds...), boundary)
	own := len(inner) - 1
	if err := p.skipTo(inner); err != nil { // preamble
		return err
	}
	for !s.eof && delimiterOf(s.cur, inner) == own && p.parts < maxParts {
		closing := isCloseDelimiter(s.cur, boundary)
		if err := s.consume(); err != nil {
			return err
		}
		if closing {
			break
		}
		var child Part
		if err := p.entity(&child, nil, inner, depth+1, part.Subtype == "digest"); err != nil {
			return err
		}
		part.Parts = append(part.Parts, child)
	}
	return p.skipTo(bounds) // epilogue
}

func isBlank(line []byte) bool {
	return len(line) == 0 || string(line) == "\n" || string(line) == "\r\n"
}

// delimiterOf returns the index of the innermost boundary that line
// delimits, or -1.
func delimiterOf(line []byte, bounds []string) int {
	if len(bounds) == 0 || len(line) < 3 || line[0] != '-' || line[1] != '-' {
		return -1
	}
	rest := line[2:]
	for i := len(bounds) - 1; i >= 0; i-- {
		b := bounds[i]
		if len(rest) < len(b) || string(rest[:len(b)]) != b {
			continue
		}
		tail := rest[len(b):]
		if len(tail) >= 2 && tail[0] == '-' && tail[1] == '-' {
			tail = tail[2:]
		}
		if strings.TrimRight(string(tail), " \t\r\n") == "" {
			return i
		}
	}
	return -1
}

func isCloseDelimiter(line []byte, boundary string) bool {
	rest := line[2+len(boundary):]
	return len(rest) >= 2 && rest[0] == '-' && rest[1] == '-'
}

// header collects the fields mimeinfo needs, unfolded.
type header struct {
	fields  map[string]string
	curName string
	curVal  strings.Builder
	skip    bool
	// trace, if set, collects the trace addresses above the first
	// Received field.
	trace *[]string
}

// traceFields name the delivery trace fields MTAs and delivery agents
// prepend: Postfix (Delivered-To, X-Original-To), Dovecot (Delivered-To),
// Exim (Envelope-To).
var traceFields = map[string]bool{"delivered-to": true, "x-original-to": true, "envelope-to": true}

// maxTrace bounds the trace addresses kept.
const maxTrace = 16

var wanted = map[string]bool{
	"content-type": true, "content-transfer-encoding": true, "content-id": true,
	"content-description": true, "content-disposition": true, "content-language": true,
	"content-location": true, "content-md5": true,
	"date": true, "subject": true, "from": true, "sender": true, "reply-to": true,
	"to": true, "cc": true, "bcc": true, "in-reply-to": true, "message-id": true,
}

func (h *header) addLine(line []byte, atLineStart bool) {
	text := strings.TrimRight(string(line), "\r\n")
	if !atLineStart || len(text) > 0 && (text[0] == ' ' || text[0] == '\t') {
		if !h.skip && h.curName != "" && h.curVal.Len() < maxFieldLen {
			h.curVal.WriteString(text)
		}
		return
	}
	h.flush()
	colon := strings.IndexByte(text, ':')
	if colon <= 0 {
		h.skip = true // not a header field: ignored, as mail servers do
		return
	}
	name := strings.ToLower(strings.TrimSpace(text[:colon]))
	if h.trace != nil {
		switch {
		case name == "received":
			h.trace = nil
		case traceFields[name] && len(*h.trace) < maxTrace:
			if addr := strings.Trim(strings.TrimSpace(text[colon+1:]), "<>"); strings.Contains(addr, "@") && !strings.ContainsAny(addr, " \t,;") {
				*h.trace = append(*h.trace, addr)
			}
		}
	}
	h.skip = !wanted[name]
	if h.fields != nil {
		if _, seen := h.fields[name]; seen {
			h.skip = true // the first occurrence wins
		}
	}
	if h.skip {
		return
	}
	h.curName = name
	h.curVal.WriteString(text[colon+1:])
}

func (h *header) flush() {
	if h.curName != "" {
		if h.fields == nil {
			h.fields = map[string]string{}
		}
		v := strings.TrimSpace(h.curVal.String())
		if len(v) > maxFieldLen {
			v = v[:maxFieldLen]
		}
		h.fields[h.curName] = v
	}
	h.curName = ""
	h.curVal.Reset()
}

func (h *header) get(name string) string { return h.fields[name] }

func (h *header) envelope() Envelope {
	e := Envelope{
		Date:      h.get("date"),
		Subject:   h.get("subject"),
		From:      ParseAddressList(h.get("from")),
		Sender:    ParseAddressList(h.get("sender")),
		ReplyTo:   ParseAddressList(h.get("reply-to")),
		To:        ParseAddressList(h.get("to")),
		Cc:        ParseAddressList(h.get("cc")),
		Bcc:       ParseAddressList(h.get("bcc")),
		InReplyTo: h.get("in-reply-to"),
		MessageID: h.get("message-id"),
	}
	// RFC 3501: sender and reply-to default to from.
	if len(e.Sender) == 0 {
		e.Sender = e.From
	}
	if len(e.ReplyTo) == 0 {
		e.ReplyTo = e.From
	}
	return e
}

// describe fills the content fields of part from its header, with the
// RFC 2045 defaults (text/plain; charset=us-ascii; 7bit), or message/rfc822
// for a part of a digest.
func (h *header) describe(part *Part, inDigest bool) {
	part.Type, part.Subtype = "text", "plain"
	if inDigest {
		part.Type, part.Subtype = "message", "rfc822"
	}
	if ct := h.get("content-type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err == nil {
			if slash := strings.IndexByte(mt, '/'); slash > 0 && slash < len(mt)-1 {
				part.Type, part.Subtype = mt[:slash], mt[slash+1:]
				part.Params = params
			}
		}
	}
	if part.Type == "text" && part.Params["charset"] == "" {
		if part.Params == nil {
			part.Params = map[string]string{}
		}
		part.Params["charset"] = "us-ascii"
	}
	if part.Type == "multipart" && part.Params["boundary"] == "" {
		part.Type, part.Subtype, part.Params = "text", "plain", map[string]string{"charset": "us-ascii"}
	}
	part.ID = h.get("content-id")
	part.Description = h.get("content-description")
	part.Encoding = strings.ToLower(h.get("content-transfer-encoding"))
	if part.Encoding == "" {
		part.Encoding = "7bit"
	}
	part.MD5 = h.get("content-md5")
	part.Location = h.get("content-location")
	if cd := h.get("content-disposition"); cd != "" {
		if disp, params, err := mime.ParseMediaType(cd); err == nil {
			part.Disposition, part.DispositionParams = disp, params
		}
	}
	if lang := h.get("content-language"); lang != "" {
		for _, l := range strings.Split(lang, ",") {
			if l = strings.TrimSpace(l); l != "" {
				part.Language = append(part.Language, l)
			}
		}
	}
}

// scanner reads lines, keeping their absolute offsets. Lines longer than
// its buffer come as several fragments; only a fragment at the start of a
// line can be a header field, a blank line or a delimiter.
type scanner struct {
	r *bufio.Reader
	// cur is the current, not yet consumed, line or fragment.
	cur            []byte
	curAtLineStart bool
	off            int64 // offset of cur
	eof            bool
	// atLineStart tells whether the next fragment read starts a line.
	atLineStart bool
	// prevEOL is the length of the line break that ended the last
	// consumed fragment (0 if none).
	prevEOL int
	// lines counts consumed line breaks.
	lines int64
}

func (s *scanner) advance() error {
	line, err := s.r.ReadSlice('\n')
	s.cur = line
	s.curAtLineStart = s.atLineStart
	switch {
	case err == nil:
		s.atLineStart = true
	case err == bufio.ErrBufferFull:
		s.atLineStart = false
	case err == io.EOF:
		s.atLineStart = false
		if len(line) == 0 {
			s.eof = true
		}
	default:
		return err
	}
	return nil
}

// skipToEnd consumes everything left: what the fragments would have
// counted one by one (offset, line breaks, the last line break), counted
// over whole buffers instead.
func (s *scanner) skipToEnd() error {
	var last [2]byte // the last two bytes consumed
	for !s.eof {
		s.off += int64(len(s.cur))
		s.lines += int64(bytes.Count(s.cur, newline))
		if n := len(s.cur); n >= 2 {
			last = [2]byte{s.cur[n-2], s.cur[n-1]}
		} else if n == 1 {
			last = [2]byte{last[1], s.cur[0]}
		}
		if s.r.Buffered() == 0 {
			if _, err := s.r.Peek(1); err == io.EOF {
				s.cur, s.eof = s.cur[:0], true
				break
			} else if err != nil {
				return err
			}
		}
		s.cur, _ = s.r.Peek(s.r.Buffered())
		if _, err := s.r.Discard(len(s.cur)); err != nil {
			return err
		}
	}
	s.prevEOL = 0
	if last[1] == '\n' {
		s.prevEOL = 1
		if last[0] == '\r' {
			s.prevEOL = 2
		}
	}
	s.curAtLineStart, s.atLineStart = false, false
	return nil
}

var newline = []byte{'\n'}

// consume moves past the current fragment.
func (s *scanner) consume() error {
	n := len(s.cur)
	s.off += int64(n)
	s.prevEOL = 0
	if n > 0 && s.cur[n-1] == '\n' {
		s.lines++
		s.prevEOL = 1
		if n > 1 && s.cur[n-2] == '\r' {
			s.prevEOL = 2
		}
	}
	return s.advance()
}
