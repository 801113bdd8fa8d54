// Package imapcheck is a multi-client IMAP consistency checker: clients
// on a few users run a random mix of commands against a server, each
// keeping a model of its selected mailbox built only from the server's
// responses, and check every response against it and against what all
// clients together know (which message each UID names, which session got
// \Recent, what bytes were appended). It runs the same way against
// Dovecot and against mailcapture's local server: an error it reports
// against Dovecot is a mistake of the checker about IMAP.
package imapcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// value is one element of a response: an atom, number, string, NIL or a
// parenthesised list.
type value struct {
	kind  valueKind
	s     string // atom or string text
	list  []value
	isNum bool
	num   uint64
}

type valueKind int

const (
	vAtom valueKind = iota
	vString
	vNil
	vList
)

func (v value) upper() string { return strings.ToUpper(v.s) }

// response is one server response line (literals included).
type response struct {
	tag    string // "*", "+" or a command's tag
	fields []value
	raw    string // the line, literals elided
}

// kind returns the response's keyword: OK, NO, BAD, BYE, FLAGS, LIST...
// or, after a number, EXISTS, EXPUNGE, FETCH, RECENT.
func (r *response) kind() string {
	if len(r.fields) == 0 {
		return ""
	}
	if r.fields[0].isNum && len(r.fields) > 1 {
		return r.fields[1].upper()
	}
	return r.fields[0].upper()
}

// number is the number before EXISTS, EXPUNGE, FETCH, RECENT.
func (r *response) number() uint32 {
	if len(r.fields) > 0 && r.fields[0].isNum {
		return uint32(r.fields[0].num)
	}
	return 0
}

// code returns the response code of a status response ("[CODE ...]"),
// without brackets, in upper case.
func (r *response) code() string {
	i := strings.IndexByte(r.raw, '[')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(r.raw[i:], ']')
	if j < 0 {
		return ""
	}
	return strings.ToUpper(r.raw[i+1 : i+j])
}

// wireConn is a connection to the server under test.
type wireConn struct {
	c       net.Conn
	br      *bufio.Reader
	timeout time.Duration
	n       int
}

func dial(ctx context.Context, addr string, timeout time.Duration) (*wireConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &wireConn{c: c, br: bufio.NewReaderSize(c, 64<<10), timeout: timeout}, nil
}

func (w *wireConn) close() { w.c.Close() }

func (w *wireConn) write(s string) error {
	w.c.SetWriteDeadline(time.Now().Add(w.timeout))
	_, err := io.WriteString(w.c, s)
	return err
}

// nextTag returns a new command tag.
func (w *wireConn) nextTag() string {
	w.n++
	return "c" + strconv.Itoa(w.n)
}

// read reads one response.
func (w *wireConn) read() (*response, error) {
	w.c.SetReadDeadline(time.Now().Add(w.timeout))
	p := &parser{br: w.br}
	return p.response()
}

// parser reads one response from the connection, literals included.
type parser struct {
	br   *bufio.Reader
	line []byte
	pos  int
	raw  strings.Builder
}

var errMalformed = errors.New("malformed response")

func (p *parser) nextLine() error {
	line, err := p.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A long line: gather it whole.
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			line, err = p.br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		line = buf
	}
	if err != nil {
		return err
	}
	line = []byte(strings.TrimRight(string(line), "\r\n"))
	p.line, p.pos = line, 0
	if p.raw.Len() < 4096 {
		p.raw.Write(line[:min(len(line), 4096)])
	}
	return nil
}

func (p *parser) response() (*response, error) {
	if err := p.nextLine(); err != nil {
		return nil, err
	}
	r := &response{}
	sp := strings.IndexByte(string(p.line), ' ')
	if sp < 0 {
		r.tag = string(p.line)
		r.raw = p.raw.String()
		return r, nil
	}
	r.tag = string(p.line[:sp])
	p.pos = sp + 1
	if r.tag == "+" {
		r.raw = p.raw.String()
		return r, nil
	}
	status := false
	for p.pos < len(p.line) {
		if p.line[p.pos] == ' ' {
			p.pos++
			continue
		}
		// After a status word, the rest is a code and human text.
		if status {
			break
		}
		v, err := p.value()
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %v", errMalformed, p.raw.String(), err)
		}
		r.fields = append(r.fields, v)
		if len(r.fields) == 1 {
			switch v.upper() {
			case "OK", "NO", "BAD", "BYE", "PREAUTH":
				status = true
			}
		}
	}
	r.raw = p.raw.String()
	return r, nil
}

func (p *parser) value() (value, error) {
	c := p.line[p.pos]
	switch {
	case c == '(':
		p.pos++
		v := value{kind: vList}
		for {
			if p.pos >= len(p.line) {
				return v, errors.New("unterminated list")
			}
			switch p.line[p.pos] {
			case ')':
				p.pos++
				return v, nil
			case ' ':
				p.pos++
				continue
			}
			item, err := p.value()
			if err != nil {
				return v, err
			}
			v.list = append(v.list, item)
		}
	case c == '"':
		p.pos++
		var b strings.Builder
		for p.pos < len(p.line) {
			ch := p.line[p.pos]
			p.pos++
			if ch == '\\' && p.pos < len(p.line) {
				b.WriteByte(p.line[p.pos])
				p.pos++
				continue
			}
			if ch == '"' {
				return value{kind: vString, s: b.String()}, nil
			}
			b.WriteByte(ch)
		}
		return value{}, errors.New("unterminated string")
	case c == '{' || c == '~' && p.pos+1 < len(p.line) && p.line[p.pos+1] == '{':
		if c == '~' {
			p.pos++
		}
		end := strings.IndexByte(string(p.line[p.pos:]), '}')
		if end < 0 || p.pos+end+1 != len(p.line) {
			return value{}, errors.New("bad literal")
		}
		n, err := strconv.Atoi(string(p.line[p.pos+1 : p.pos+end]))
		if err != nil || n < 0 {
			return value{}, errors.New("bad literal size")
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(p.br, buf); err != nil {
			return value{}, err
		}
		if err := p.nextLine(); err != nil {
			return value{}, err
		}
		return value{kind: vString, s: string(buf)}, nil
	}
	// An atom, with brackets kept whole ("BODY[HEADER.FIELDS (A B)]").
	start := p.pos
	depth := 0
	for p.pos < len(p.line) {
		ch := p.line[p.pos]
		if ch == '[' {
			depth++
		} else if ch == ']' && depth > 0 {
			depth--
		} else if depth == 0 && (ch == ' ' || ch == '(' || ch == ')') {
			break
		}
		p.pos++
	}
	if p.pos == start {
		return value{}, fmt.Errorf("unexpected %q", p.line[p.pos])
	}
	s := string(p.line[start:p.pos])
	if strings.EqualFold(s, "NIL") {
		return value{kind: vNil}, nil
	}
	v := value{kind: vAtom, s: s}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		v.isNum, v.num = true, n
	}
	return v, nil
}

// fetchItems returns a FETCH response's items by upper-case name.
func fetchItems(r *response) map[string]value {
	out := map[string]value{}
	if len(r.fields) < 3 || r.fields[2].kind != vList {
		return out
	}
	l := r.fields[2].list
	for i := 0; i+1 < len(l); i += 2 {
		out[l[i].upper()] = l[i+1]
	}
	return out
}
