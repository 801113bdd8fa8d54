// Package imapwire is the IMAP syntax (RFC 3501, RFC 9051) as both sides
// speak it here: a reader of client commands (lines, quoted strings and
// literals, synchronising or not, within limits), helpers that encode
// server responses, modified UTF-7 mailbox names and sequence sets. It
// knows nothing of mailboxes or sessions: the servers build on it.
package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits a Reader applies unless told otherwise.
const (
	DefaultMaxLine    = 64 * 1024
	DefaultMaxLiteral = 64 * 1024
	DefaultMaxCommand = 256 * 1024
)

// SyntaxError is a command the grammar does not allow: the client gets a
// tagged BAD with its text.
type SyntaxError struct{ Msg string }

func (e *SyntaxError) Error() string { return e.Msg }

// LimitError is a command over one of the reader's limits (RFC 7162 3.2
// for sizes, RFC 2683 3.2.1.5 for lines): tagged BAD, or NO [TOOBIG] for
// a literal that was refused before it was sent.
type LimitError struct{ Msg string }

func (e *LimitError) Error() string { return e.Msg }

func syntaxf(format string, args ...any) error {
	return &SyntaxError{Msg: fmt.Sprintf(format, args...)}
}

// Reader reads client commands from a connection. A command is one line,
// or several when it carries literals: each literal ends a line and the
// command goes on in the next one. The parse methods read the current
// line from left to right.
type Reader struct {
	br *bufio.Reader
	// MaxLine bounds each line, MaxLiteral each literal read into memory,
	// MaxCommand a whole command with its literals (0: the defaults).
	MaxLine    int
	MaxLiteral int64
	MaxCommand int
	// Continue is called before the bytes of a synchronising literal are
	// read: it sends the continuation request ("+ ...") and flushes.
	Continue func() error

	line []byte // the current line, without its line end
	pos  int
	used int // bytes of the command so far
	tag  string
}

// NewReader reads commands from br.
func NewReader(br *bufio.Reader) *Reader { return &Reader{br: br} }

// Buffered is how many bytes are read ahead: zero when no pipelined
// command waits.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Buf is the underlying reader.
func (r *Reader) Buf() *bufio.Reader { return r.br }

func (r *Reader) maxLine() int {
	if r.MaxLine > 0 {
		return r.MaxLine
	}
	return DefaultMaxLine
}

func (r *Reader) maxLiteral() int64 {
	if r.MaxLiteral > 0 {
		return r.MaxLiteral
	}
	return DefaultMaxLiteral
}

func (r *Reader) maxCommand() int {
	if r.MaxCommand > 0 {
		return r.MaxCommand
	}
	return DefaultMaxCommand
}

// ErrLineTooLong is a line over MaxLine; the line was read to its end and
// dropped. Tag, if it could be read, is the command's tag.
type ErrLineTooLong struct{ Tag string }

func (e *ErrLineTooLong) Error() string { return "line too long" }

// ReadLine reads one line (for IDLE's DONE and SASL responses), without
// its line end.
func (r *Reader) ReadLine() (string, error) {
	line, err := r.readLine()
	return string(line), err
}

// readLine reads a line, at most MaxLine bytes; a longer one is read to
// its end and refused with ErrLineTooLong.
func (r *Reader) readLine() ([]byte, error) {
	var long []byte // a line split by the buffer
	for {
		frag, err := r.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull || len(long) > 0 {
			if len(long) <= r.maxLine() {
				long = append(long, frag...)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			frag = long
		}
		if err != nil {
			if err == io.EOF && len(frag) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(frag) > r.maxLine()+2 {
			return nil, &ErrLineTooLong{Tag: leadingTag(frag)}
		}
		frag = frag[:len(frag)-1]
		if n := len(frag); n > 0 && frag[n-1] == '\r' {
			frag = frag[:n-1]
		}
		return frag, nil
	}
}

// leadingTag returns the tag a line starts with, if it is a valid one.
func leadingTag(line []byte) string {
	end := bytes.IndexByte(line, ' ')
	if end <= 0 || end > 64 {
		return ""
	}
	tag := string(line[:end])
	for i := 0; i < len(tag); i++ {
		if !IsAtomChar(tag[i]) || tag[i] == '+' {
			return ""
		}
	}
	return tag
}

// Begin reads the first line of the next command.
func (r *Reader) Begin() error {
	r.tag = ""
	line, err := r.readLine()
	if err != nil {
		return err
	}
	r.line, r.pos, r.used = line, 0, len(line)
	if r.used > r.maxCommand() {
		return &LimitError{Msg: "command too long"}
	}
	return nil
}

// Tag reads the command's tag.
func (r *Reader) Tag() (string, error) {
	start := r.pos
	for r.pos < len(r.line) && IsAtomChar(r.line[r.pos]) && r.line[r.pos] != '+' {
		r.pos++
	}
	if r.pos == start {
		return "", syntaxf("missing or invalid tag")
	}
	r.tag = string(r.line[start:r.pos])
	return r.tag, nil
}

// CurrentTag is the tag read by Tag, or "".
func (r *Reader) CurrentTag() string { return r.tag }

// Discard skips what is left of a command that is refused: the rest of
// the line and, when it ends with a non-synchronising literal, the
// literal and the lines after it. A synchronising literal is not asked
// for: the client gets the tagged answer instead of "+" and does not
// send it (RFC 3501 7.5).
func (r *Reader) Discard() error {
	for {
		n, sync, ok := literalAtEnd(r.line)
		r.pos = len(r.line)
		if !ok || sync {
			return nil
		}
		if _, err := io.CopyN(io.Discard, r.br, n); err != nil {
			return err
		}
		line, err := r.readLine()
		if err != nil {
			return err
		}
		r.line, r.pos = line, 0
	}
}

// literalAtEnd reads "{n}" or "{n+}" ending a line.
func literalAtEnd(line []byte) (n int64, sync, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, false
	}
	inner := line[open+1 : len(line)-1]
	sync = true
	if len(inner) > 0 && (inner[len(inner)-1] == '+' || inner[len(inner)-1] == '-') {
		inner, sync = inner[:len(inner)-1], false
	}
	if len(inner) == 0 || len(inner) > 19 {
		return 0, false, false
	}
	v, err := strconv.ParseInt(string(inner), 10, 64)
	if err != nil || v < 0 {
		return 0, false, false
	}
	return v, sync, true
}

// AtEnd tells whether the command has nothing left.
func (r *Reader) AtEnd() bool { return r.pos >= len(r.line) }

// End checks that the command has nothing left.
func (r *Reader) End() error {
	if r.pos < len(r.line) {
		return syntaxf("unexpected %q at the end of the command", clip(r.line[r.pos:]))
	}
	return nil
}

func clip(b []byte) string {
	if len(b) > 20 {
		return string(b[:20]) + "..."
	}
	return string(b)
}

// Peek returns the next byte of the line, or 0 at its end.
func (r *Reader) Peek() byte {
	if r.pos < len(r.line) {
		return r.line[r.pos]
	}
	return 0
}

// Skip moves past n bytes of the line.
func (r *Reader) Skip(n int) { r.pos = min(r.pos+n, len(r.line)) }

// SP reads one space.
func (r *Reader) SP() error {
	if r.Peek() != ' ' {
		if r.AtEnd() {
			return syntaxf("missing argument")
		}
		return syntaxf("expected a space before %q", clip(r.line[r.pos:]))
	}
	r.pos++
	return nil
}

// Byte reads the byte c.
func (r *Reader) Byte(c byte) error {
	if r.Peek() != c {
		return syntaxf("expected %q", c)
	}
	r.pos++
	return nil
}

// Maybe reads c if it comes next.
func (r *Reader) Maybe(c byte) bool {
	if r.Peek() == c {
		r.pos++
		return true
	}
	return false
}

// MaybeWord reads a word (case-insensitive) if it comes next, followed
// by a space, a parenthesis or the end of the line.
func (r *Reader) MaybeWord(word string) bool {
	rest := r.line[r.pos:]
	if len(rest) < len(word) || !strings.EqualFold(string(rest[:len(word)]), word) {
		return false
	}
	if len(rest) > len(word) {
		switch rest[len(word)] {
		case ' ', ')', '(':
		default:
			return false
		}
	}
	r.pos += len(word)
	return true
}

// IsAtomChar is RFC 3501 ATOM-CHAR: any CHAR but controls, space and
// atom-specials ( ) { % * " \ ].
func IsAtomChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return c > 0x1f && c < 0x7f
}

// Atom reads an atom.
func (r *Reader) Atom() (string, error) {
	start := r.pos
	for r.pos < len(r.line) && IsAtomChar(r.line[r.pos]) {
		r.pos++
	}
	if r.pos == start {
		if r.AtEnd() {
			return "", syntaxf("missing argument")
		}
		return "", syntaxf("expected an atom at %q", clip(r.line[r.pos:]))
	}
	return string(r.line[start:r.pos]), nil
}

// AtomUpper reads an atom in upper case.
func (r *Reader) AtomUpper() (string, error) {
	a, err := r.Atom()
	return strings.ToUpper(a), err
}

// Chars reads a run of bytes that pass ok (at least one).
func (r *Reader) Chars(ok func(byte) bool) (string, error) {
	start := r.pos
	for r.pos < len(r.line) && ok(r.line[r.pos]) {
		r.pos++
	}
	if r.pos == start {
		return "", syntaxf("unexpected %q", clip(r.line[r.pos:]))
	}
	return string(r.line[start:r.pos]), nil
}

// Number reads a 32-bit number.
func (r *Reader) Number() (uint32, error) {
	n, err := r.Number64()
	if err != nil {
		return 0, err
	}
	if n > 0xffffffff {
		return 0, syntaxf("number too large")
	}
	return uint32(n), nil
}

// Number64 reads a 63-bit number.
func (r *Reader) Number64() (uint64, error) {
	start := r.pos
	for r.pos < len(r.line) && r.line[r.pos] >= '0' && r.line[r.pos] <= '9' {
		r.pos++
	}
	if r.pos == start {
		return 0, syntaxf("expected a number")
	}
	n, err := strconv.ParseUint(string(r.line[start:r.pos]), 10, 63)
	if err != nil {
		return 0, syntaxf("number too large")
	}
	return n, nil
}

// Quoted reads a quoted string.
func (r *Reader) Quoted() (string, error) {
	if err := r.Byte('"'); err != nil {
		return "", err
	}
	var b []byte
	for r.pos < len(r.line) {
		c := r.line[r.pos]
		r.pos++
		switch c {
		case '"':
			return string(b), nil
		case '\\':
			if r.pos >= len(r.line) || (r.line[r.pos] != '"' && r.line[r.pos] != '\\') {
				return "", syntaxf("bad escape in a quoted string")
			}
			b = append(b, r.line[r.pos])
			r.pos++
		default:
			b = append(b, c)
		}
	}
	return "", syntaxf("unterminated quoted string")
}

// LiteralNext tells whether a literal starts here, and its size.
func (r *Reader) LiteralNext() (n int64, sync, ok bool) {
	if r.Peek() != '{' {
		return 0, false, false
	}
	return literalAtEnd(r.line[r.pos:])
}

// Literal reads a literal into memory (at most MaxLiteral bytes) and
// moves on to the line after it.
func (r *Reader) Literal() ([]byte, error) {
	n, sync, ok := r.LiteralNext()
	if !ok {
		return nil, syntaxf("bad literal")
	}
	if n > r.maxLiteral() || r.used+int(n) > r.maxCommand() {
		return nil, &LimitError{Msg: fmt.Sprintf("literal of %d bytes is too large", n)}
	}
	r.pos = len(r.line)
	if sync && r.Continue != nil {
		if err := r.Continue(); err != nil {
			return nil, err
		}
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r.br, buf); err != nil {
		return nil, err
	}
	r.used += int(n)
	if err := r.nextLine(); err != nil {
		return nil, err
	}
	return buf, nil
}

// LiteralReader starts a literal that the caller streams (APPEND): it
// asks for a synchronising one, and returns a reader of its n bytes. Call
// Resume once it is read to its end.
func (r *Reader) LiteralReader() (io.Reader, int64, error) {
	n, sync, ok := r.LiteralNext()
	if !ok {
		return nil, 0, syntaxf("expected a literal")
	}
	r.pos = len(r.line)
	if sync && r.Continue != nil {
		if err := r.Continue(); err != nil {
			return nil, 0, err
		}
	}
	return io.LimitReader(r.br, n), n, nil
}

// SkipLiteral reads and drops a non-synchronising literal (refused after
// it was announced), then resumes; a synchronising one is not asked for.
func (r *Reader) SkipLiteral() error {
	n, sync, ok := r.LiteralNext()
	if !ok || sync {
		r.pos = len(r.line)
		return nil
	}
	r.pos = len(r.line)
	if _, err := io.CopyN(io.Discard, r.br, n); err != nil {
		return err
	}
	return r.Resume()
}

// Resume reads the line that follows a streamed literal.
func (r *Reader) Resume() error { return r.nextLine() }

func (r *Reader) nextLine() error {
	line, err := r.readLine()
	if err != nil {
		var long *ErrLineTooLong
		if errors.As(err, &long) {
			return &LimitError{Msg: "line too long"}
		}
		return err
	}
	r.used += len(line)
	if r.used > r.maxCommand() {
		return &LimitError{Msg: "command too long"}
	}
	r.line, r.pos = line, 0
	return nil
}

// String reads a string: quoted or literal.
func (r *Reader) String() (string, error) {
	switch r.Peek() {
	case '"':
		return r.Quoted()
	case '{':
		b, err := r.Literal()
		return string(b), err
	}
	if r.AtEnd() {
		return "", syntaxf("missing argument")
	}
	return "", syntaxf("expected a string at %q", clip(r.line[r.pos:]))
}

// IsAstringChar is RFC 3501 ASTRING-CHAR: an atom char or "]".
func IsAstringChar(c byte) bool { return IsAtomChar(c) || c == ']' }

// Astring reads an atom (with "]") or a string.
func (r *Reader) Astring() (string, error) {
	switch r.Peek() {
	case '"', '{':
		return r.String()
	}
	start := r.pos
	for r.pos < len(r.line) && IsAstringChar(r.line[r.pos]) {
		r.pos++
	}
	if r.pos == start {
		if r.AtEnd() {
			return "", syntaxf("missing argument")
		}
		return "", syntaxf("expected a string at %q", clip(r.line[r.pos:]))
	}
	return string(r.line[start:r.pos]), nil
}

// NString reads a string or NIL; nil reports NIL.
func (r *Reader) NString() (s string, isNil bool, err error) {
	if r.MaybeWord("NIL") {
		return "", true, nil
	}
	s, err = r.String()
	return s, false, err
}

// IsListChar is what a LIST pattern may hold unquoted: astring chars
// and the wildcards % and * (RFC 3501 list-char).
func IsListChar(c byte) bool { return IsAstringChar(c) || c == '%' || c == '*' }

// ListMailbox reads a LIST pattern: list-char run or a string.
func (r *Reader) ListMailbox() (string, error) {
	switch r.Peek() {
	case '"', '{':
		return r.String()
	}
	return r.Chars(IsListChar)
}

// List reads a parenthesised list, calling item for each element
// (separated by single spaces). An empty list is allowed.
func (r *Reader) List(item func() error) error {
	if err := r.Byte('('); err != nil {
		return err
	}
	if r.Maybe(')') {
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		if r.Maybe(')') {
			return nil
		}
		if err := r.SP(); err != nil {
			return syntaxf("expected a space or ')' in a list")
		}
	}
}

// Flag reads a flag: an atom, or \ and an atom (\* only where allowed).
func (r *Reader) Flag(allowWildcard bool) (string, error) {
	if r.Maybe('\\') {
		if allowWildcard && r.Maybe('*') {
			return `\*`, nil
		}
		a, err := r.Atom()
		if err != nil {
			return "", syntaxf("bad system flag")
		}
		return `\` + a, nil
	}
	return r.Atom()
}

// FlagList reads "(" flag *(SP flag) ")", or a single flag unless
// listOnly.
func (r *Reader) FlagList(listOnly bool) ([]string, error) {
	var flags []string
	if r.Peek() != '(' {
		if listOnly {
			return nil, syntaxf("expected a flag list")
		}
		for {
			f, err := r.Flag(false)
			if err != nil {
				return nil, err
			}
			flags = append(flags, f)
			if r.Peek() != ' ' || r.pos+1 >= len(r.line) {
				return flags, nil
			}
			// STORE accepts a bare flag list: flags separated by spaces.
			r.pos++
		}
	}
	err := r.List(func() error {
		f, err := r.Flag(false)
		flags = append(flags, f)
		return err
	})
	return flags, err
}
