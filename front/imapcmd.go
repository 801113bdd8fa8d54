package front

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits on what a client may send before it is authenticated.
const (
	maxPreauthLine    = 8 * 1024
	maxPreauthLiteral = 8 * 1024
	// maxPreauthCommand bounds a whole command, its literals included.
	maxPreauthCommand = 24 * 1024
)

// errBadCommand is a command that cannot be parsed; the client gets BAD.
var errBadCommand = errors.New("malformed command")

// errTooLong is a command over a pre-auth bound (a kind of errBadCommand).
var errTooLong = fmt.Errorf("%w: too long before login", errBadCommand)

// preauthCommand is one parsed command of the not-authenticated state.
type preauthCommand struct {
	tag  string
	name string // upper case
	args []string
}

// readPreauthCommand reads one command: tag, name and arguments (atoms,
// quoted strings, literals {n} and non-synchronising {n+}). For a
// synchronising literal it asks for the bytes with cont.
func readPreauthCommand(r *bufio.Reader, cont func() error) (*preauthCommand, error) {
	line, err := readLimitedLine(r)
	if err != nil {
		return nil, err
	}
	cmd := &preauthCommand{}
	rest := line
	cmd.tag, rest = nextAtom(rest)
	if cmd.tag == "" || rest == "" && cmd.tag == "" {
		return nil, errBadCommand
	}
	if !strings.HasPrefix(rest, " ") {
		return cmd, errBadCommand
	}
	cmd.name, rest = nextAtom(rest[1:])
	cmd.name = strings.ToUpper(cmd.name)
	if cmd.name == "" {
		return cmd, errBadCommand
	}
	if rest != "" && rest[0] != ' ' {
		return cmd, errBadCommand
	}
	depth, total := 0, len(line)
	for rest != "" {
		// Spaces and list parentheses separate arguments; lists (ID's) are
		// flattened, since nothing before login needs their structure.
		switch rest[0] {
		case ' ':
			rest = rest[1:]
			continue
		case '(':
			depth++
			rest = rest[1:]
			continue
		case ')':
			if depth--; depth < 0 {
				return cmd, errBadCommand
			}
			rest = rest[1:]
			continue
		}
		switch {
		case rest[0] == '"':
			s, after, ok := quoted(rest)
			if !ok {
				return cmd, errBadCommand
			}
			cmd.args, rest = append(cmd.args, s), after
		case rest[0] == '{':
			n, sync, ok := literalHeader(rest)
			if !ok {
				return cmd, errBadCommand
			}
			if n > maxPreauthLiteral {
				return cmd, fmt.Errorf("%w: literal of %d bytes", errTooLong, n)
			}
			if total += n; total > maxPreauthCommand {
				return cmd, fmt.Errorf("%w: command over %d bytes", errTooLong, maxPreauthCommand)
			}
			if sync {
				if err := cont(); err != nil {
					return cmd, err
				}
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(r, buf); err != nil {
				return cmd, err
			}
			cmd.args = append(cmd.args, string(buf))
			if rest, err = readLimitedLine(r); err != nil {
				return cmd, err
			}
			if total += len(rest); total > maxPreauthCommand {
				return cmd, fmt.Errorf("%w: command over %d bytes", errTooLong, maxPreauthCommand)
			}
		default:
			var a string
			a, rest = nextAtom(rest)
			if a == "" {
				return cmd, errBadCommand
			}
			cmd.args = append(cmd.args, a)
		}
	}
	if depth != 0 {
		return cmd, errBadCommand
	}
	return cmd, nil
}

// readLimitedLine reads a line without its CRLF; an overlong line is read
// to its end and refused.
func readLimitedLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		part, err := r.ReadSlice('\n')
		if len(b)+len(part) <= maxPreauthLine {
			b = append(b, part...)
		}
		if err == nil {
			if len(b) > maxPreauthLine || b[len(b)-1] != '\n' {
				return "", fmt.Errorf("%w: line over %d bytes", errTooLong, maxPreauthLine)
			}
			return strings.TrimRight(string(b), "\r\n"), nil
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
		if len(b) >= maxPreauthLine {
			b = b[:maxPreauthLine+1]
		}
	}
}

func nextAtom(s string) (atom, rest string) {
	i := strings.IndexAny(s, " ()\"")
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// quoted reads a quoted string (RFC 3501 quoted: \" and \\ escapes).
func quoted(s string) (string, string, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 >= len(s) || (s[i+1] != '"' && s[i+1] != '\\') {
				return "", "", false
			}
			b.WriteByte(s[i+1])
			i++
		case '"':
			return b.String(), s[i+1:], true
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", false
}

// literalHeader reads "{n}" or "{n+}" at the end of a line.
func literalHeader(s string) (n int, sync, ok bool) {
	if !strings.HasSuffix(s, "}") {
		return 0, false, false
	}
	inner := s[1 : len(s)-1]
	sync = true
	if strings.HasSuffix(inner, "+") {
		inner, sync = inner[:len(inner)-1], false
	}
	v, err := strconv.Atoi(inner)
	if err != nil || v < 0 {
		return 0, false, false
	}
	return v, sync, true
}

// imapQuote writes s as an IMAP string: quoted when it can be, else a
// literal (non-synchronising when the server has LITERAL+).
func imapQuote(s string, literalPlus bool) (text string, literal bool) {
	if strings.ContainsAny(s, "\r\n\x00") || !isASCII(s) {
		if literalPlus {
			return fmt.Sprintf("{%d+}\r\n%s", len(s), s), true
		}
		return fmt.Sprintf("{%d}\r\n%s", len(s), s), true
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`, false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
