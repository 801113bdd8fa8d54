package mimeinfo

import "strings"

// Address is one element of an envelope address list: a mailbox, or a
// marker of the start (Group set, Mailbox the group's name) or end (Group
// set, everything else empty) of an RFC 5322 group, which IMAP writes as
// (NIL NIL "name" NIL) and (NIL NIL NIL NIL) (RFC 3501 7.4.2).
type Address struct {
	Name    string `json:"name,omitempty"`
	Route   string `json:"route,omitempty"`
	Mailbox string `json:"mailbox,omitempty"`
	Host    string `json:"host,omitempty"`
	Group   bool   `json:"group,omitempty"`
}

// GroupStart tells whether a is the start of a group.
func (a Address) GroupStart() bool { return a.Group && a.Mailbox != "" }

// GroupEnd tells whether a is the end of a group.
func (a Address) GroupEnd() bool { return a.Group && a.Mailbox == "" }

// token kinds of an address header.
const (
	tokAtom    = iota // atom or dot-atom text (also obsolete forms)
	tokQuoted         // quoted string, unescaped
	tokComment        // comment text, outer parentheses removed
	tokLiteral        // domain literal, brackets kept
	tokSpecial        // one of < > @ : ; , .
)

type token struct {
	kind int
	text string
}

// tokenize splits an address header value leniently: an unterminated
// quoted string, comment or literal runs to the end of the value.
func tokenize(v string) []token {
	var out []token
	for i := 0; i < len(v); {
		c := v[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '"':
			var b strings.Builder
			i++
			for i < len(v) && v[i] != '"' {
				if v[i] == '\\' && i+1 < len(v) {
					i++
				}
				b.WriteByte(v[i])
				i++
			}
			i++ // closing quote
			out = append(out, token{tokQuoted, b.String()})
		case c == '(':
			depth, start := 1, i+1
			i++
			for i < len(v) && depth > 0 {
				switch v[i] {
				case '\\':
					i++
				case '(':
					depth++
				case ')':
					depth--
				}
				i++
			}
			end := min(i, len(v))
			if depth == 0 {
				end--
			}
			out = append(out, token{tokComment, strings.TrimSpace(v[start:end])})
		case c == '[':
			end := strings.IndexByte(v[i:], ']')
			if end < 0 {
				end = len(v) - i - 1
			}
			out = append(out, token{tokLiteral, v[i : i+end+1]})
			i += end + 1
		case strings.IndexByte("<>@:;,.", c) >= 0:
			out = append(out, token{tokSpecial, string(c)})
			i++
		default:
			start := i
			for i < len(v) && strings.IndexByte(" \t\r\n\"()[<>@:;,.", v[i]) < 0 {
				i++
			}
			out = append(out, token{tokAtom, v[start:i]})
		}
	}
	return out
}

// addressParser reads an RFC 5322 address list (with the obsolete forms
// mail still carries: routes, empty list elements, phrases with dots).
type addressParser struct {
	toks []token
	pos  int
	// comment is the last comment seen in the current address: the name
	// of an address written "user@host (Real Name)".
	comment string
}

func (p *addressParser) peek() token {
	for p.pos < len(p.toks) && p.toks[p.pos].kind == tokComment {
		p.comment = p.toks[p.pos].text
		p.pos++
	}
	if p.pos >= len(p.toks) {
		return token{kind: -1}
	}
	return p.toks[p.pos]
}

func (p *addressParser) next() token {
	t := p.peek()
	if p.pos < len(p.toks) {
		p.pos++
	}
	return t
}

func (p *addressParser) special(c string) bool {
	t := p.peek()
	if t.kind == tokSpecial && t.text == c {
		p.pos++
		return true
	}
	return false
}

// ParseAddressList parses an address header value into envelope addresses. Nothing
// is dropped for being malformed: what cannot be read as an address is
// kept as a mailbox without a host.
func ParseAddressList(value string) []Address {
	p := &addressParser{toks: tokenize(value)}
	var out []Address
	for p.peek().kind != -1 {
		if p.special(",") {
			continue
		}
		out = p.address(out, false)
	}
	return out
}

// address reads one address (or group) and appends it.
func (p *addressParser) address(out []Address, inGroup bool) []Address {
	p.comment = ""
	phrase := p.phrase()
	t := p.peek()
	switch {
	case t.kind == tokSpecial && t.text == ":" && !inGroup:
		p.pos++
		out = append(out, Address{Group: true, Mailbox: strings.Join(phrase, " ")})
		for {
			t := p.peek()
			if t.kind == -1 {
				break
			}
			if p.special(";") {
				break
			}
			if p.special(",") {
				continue
			}
			out = p.address(out, true)
		}
		return append(out, Address{Group: true})
	case t.kind == tokSpecial && t.text == "<":
		p.pos++
		before := p.comment
		a := p.angleAddr()
		p.comment = before // a comment inside the brackets names nothing
		p.skipToEnd(inGroup)
		a.Name = strings.Join(phrase, " ")
		if a.Name == "" {
			a.Name = p.comment
		}
		return append(out, a)
	case t.kind == tokSpecial && t.text == "@":
		p.pos++
		a := Address{Mailbox: strings.Join(phrase, "")}
		a.Host = p.domain()
		p.skipToEnd(inGroup)
		a.Name = p.comment
		return append(out, a)
	}
	// A phrase alone (or nothing readable): a mailbox without a domain.
	a := Address{Mailbox: strings.Join(phrase, ""), Name: p.comment}
	p.skipToEnd(inGroup)
	if a.Mailbox == "" && a.Name == "" {
		return out
	}
	return append(out, a)
}

// phrase reads words (atoms, quoted strings) and dots up to a special
// that ends them. Words are returned with dots attached to the word
// before, as an addr-spec's local part is written.
func (p *addressParser) phrase() []string {
	var words []string
	for {
		t := p.peek()
		switch {
		case t.kind == tokAtom || t.kind == tokQuoted:
			words = append(words, t.text)
			p.pos++
		case t.kind == tokSpecial && t.text == ".":
			if len(words) == 0 {
				words = append(words, ".")
			} else {
				words[len(words)-1] += "."
			}
			p.pos++
		default:
			return joinDots(words)
		}
	}
}

// joinDots glues words separated only by a dot ("first" "." "last").
func joinDots(words []string) []string {
	var out []string
	for _, w := range words {
		if n := len(out); n > 0 && strings.HasSuffix(out[n-1], ".") {
			out[n-1] += w
			continue
		}
		out = append(out, w)
	}
	return out
}

// angleAddr reads what follows "<": [route ":"] local "@" domain ">".
func (p *addressParser) angleAddr() Address {
	var a Address
	if t := p.peek(); t.kind == tokSpecial && t.text == "@" {
		// Obsolete route: @a,@b:
		var route []string
		for p.special("@") {
			route = append(route, "@"+p.domain())
			if !p.special(",") {
				break
			}
		}
		p.special(":")
		a.Route = strings.Join(route, ",")
	}
	a.Mailbox = strings.Join(p.phrase(), "")
	if p.special("@") {
		a.Host = p.domain()
	}
	for {
		t := p.next()
		if t.kind == -1 || t.kind == tokSpecial && t.text == ">" {
			break
		}
	}
	return a
}

// domain reads a domain: dot-atoms or a literal.
func (p *addressParser) domain() string {
	var b strings.Builder
	for {
		t := p.peek()
		switch {
		case t.kind == tokAtom || t.kind == tokLiteral:
			b.WriteString(t.text)
			p.pos++
		case t.kind == tokSpecial && t.text == ".":
			b.WriteByte('.')
			p.pos++
		default:
			return b.String()
		}
	}
}

// skipToEnd drops what is left of a malformed address, up to the comma
// (or, in a group, the semicolon) that ends it; comments are still seen.
func (p *addressParser) skipToEnd(inGroup bool) {
	for {
		t := p.peek()
		if t.kind == -1 || t.kind == tokSpecial && (t.text == "," || inGroup && t.text == ";") {
			return
		}
		p.pos++
	}
}
