package legacyclient

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// SieveScript is one script a ManageSieve server keeps for a user.
type SieveScript struct {
	Name   string
	Active bool
}

// SieveSession is an authenticated ManageSieve session (RFC 5804).
type SieveSession struct {
	conn *Conn
	r    *bufio.Reader
	// Capabilities are the server's, as it announced them after TLS:
	// "SIEVE" (its extensions), "IMPLEMENTATION", "SASL", ...
	Capabilities map[string]string
}

// ErrSieveRefused is a NO from the ManageSieve server to a command other
// than the login (the script does not exist, it is invalid, ...); the
// error is a *SieveRefusal with its response code and text.
var ErrSieveRefused = errors.New("the ManageSieve server refused")

// SieveRefusal is a ManageSieve NO: its response code (NONEXISTENT,
// ACTIVE, QUOTA/MAXSIZE, ...) and human-readable text.
type SieveRefusal struct {
	Code, Text string
}

func (e *SieveRefusal) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%v: (%s) %s", ErrSieveRefused, e.Code, e.Text)
	}
	return fmt.Sprintf("%v: %s", ErrSieveRefused, e.Text)
}

func (e *SieveRefusal) Unwrap() error { return ErrSieveRefused }

// LoginManageSieve connects, runs STARTTLS when the endpoint says so,
// and authenticates with SASL PLAIN. A NO to AUTHENTICATE is
// ErrBadCredentials (NO (TRYLATER) is ErrUnavailable); a dropped or
// silent server is ErrUnavailable or ErrTimeout. ctx bounds the login.
func LoginManageSieve(ctx context.Context, ep Endpoint, cred Credentials) (*SieveSession, error) {
	conn, err := ep.Dial(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	s := &SieveSession{conn: conn, r: bufio.NewReader(conn)}
	fail := func(err error) (*SieveSession, error) {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, s.classify(err)
	}
	if err := s.readCapabilities(); err != nil {
		return fail(fmt.Errorf("greeting: %w", err))
	}
	if ep.TLS == "starttls" {
		if _, err := s.command("STARTTLS"); err != nil {
			return fail(fmt.Errorf("starttls: %w", err))
		}
		if err := conn.StartTLS(ctx, ep); err != nil {
			return fail(err)
		}
		s.r = bufio.NewReader(conn)
		// RFC 5804 2.2: the server announces its capabilities again.
		if err := s.readCapabilities(); err != nil {
			return fail(fmt.Errorf("capabilities after starttls: %w", err))
		}
	}
	ir := base64.StdEncoding.EncodeToString([]byte(cred.Authzid + "\x00" + cred.Username + "\x00" + cred.Password))
	if _, err := s.command(`AUTHENTICATE "PLAIN" ` + quoteSieve(ir)); err != nil {
		var no *sieveNo
		if errors.As(err, &no) && !strings.EqualFold(no.code, "TRYLATER") {
			conn.Close()
			return nil, fmt.Errorf("%w: %s", ErrBadCredentials, no.text)
		}
		return fail(fmt.Errorf("authenticate: %w", err))
	}
	return s, nil
}

// ListScripts lists the user's scripts and which one is active.
func (s *SieveSession) ListScripts(ctx context.Context) ([]SieveScript, error) {
	defer context.AfterFunc(ctx, func() { s.conn.Close() })()
	lines, err := s.command("LISTSCRIPTS")
	if err != nil {
		return nil, s.classify(fmt.Errorf("listscripts: %w", err))
	}
	var out []SieveScript
	for _, l := range lines {
		if len(l) == 0 {
			continue
		}
		sc := SieveScript{Name: l[0]}
		sc.Active = len(l) > 1 && strings.EqualFold(l[1], "ACTIVE")
		out = append(out, sc)
	}
	return out, nil
}

// GetScript returns a script's bytes, exactly as the server keeps them.
func (s *SieveSession) GetScript(ctx context.Context, name string) ([]byte, error) {
	defer context.AfterFunc(ctx, func() { s.conn.Close() })()
	lines, err := s.command("GETSCRIPT " + quoteSieve(name))
	if err != nil {
		return nil, s.classify(fmt.Errorf("getscript %q: %w", name, err))
	}
	if len(lines) != 1 || len(lines[0]) != 1 {
		return nil, fmt.Errorf("getscript %q: %d lines in the answer, want the script", name, len(lines))
	}
	return []byte(lines[0][0]), nil
}

// PutScript stores a script (the server checks it first).
func (s *SieveSession) PutScript(ctx context.Context, name string, body []byte) error {
	return s.simple(ctx, "PUTSCRIPT "+quoteSieve(name)+" "+literalSieve(body))
}

// CheckScript asks the server whether a script is valid.
func (s *SieveSession) CheckScript(ctx context.Context, body []byte) error {
	return s.simple(ctx, "CHECKSCRIPT "+literalSieve(body))
}

// SetActive makes a script the active one ("" deactivates all).
func (s *SieveSession) SetActive(ctx context.Context, name string) error {
	return s.simple(ctx, "SETACTIVE "+quoteSieve(name))
}

// DeleteScript deletes a script.
func (s *SieveSession) DeleteScript(ctx context.Context, name string) error {
	return s.simple(ctx, "DELETESCRIPT "+quoteSieve(name))
}

// RenameScript renames a script.
func (s *SieveSession) RenameScript(ctx context.Context, from, to string) error {
	return s.simple(ctx, "RENAMESCRIPT "+quoteSieve(from)+" "+quoteSieve(to))
}

// HaveSpace asks whether a script of size bytes may be stored as name.
func (s *SieveSession) HaveSpace(ctx context.Context, name string, size int) error {
	return s.simple(ctx, fmt.Sprintf("HAVESPACE %s %d", quoteSieve(name), size))
}

func (s *SieveSession) simple(ctx context.Context, line string) error {
	defer context.AfterFunc(ctx, func() { s.conn.Close() })()
	_, err := s.command(line)
	return s.classify(err)
}

// literalSieve is a non-synchronizing literal (RFC 5804 4).
func literalSieve(b []byte) string {
	return fmt.Sprintf("{%d+}\r\n%s", len(b), b)
}

// Close logs out and closes the connection.
func (s *SieveSession) Close() error {
	s.command("LOGOUT")
	return s.conn.Close()
}

// sieveNo is a NO or BYE answer: its response code and text.
type sieveNo struct {
	verb, code, text string
}

func (e *sieveNo) Error() string {
	if e.code != "" {
		return fmt.Sprintf("%s (%s) %s", e.verb, e.code, e.text)
	}
	return e.verb + " " + e.text
}

// classify maps a failed exchange: a watchdog timeout is ErrTimeout, a
// dropped connection or BYE ErrUnavailable, a NO ErrSieveRefused.
func (s *SieveSession) classify(err error) error {
	var no *sieveNo
	switch {
	case err == nil:
		return nil
	case s.conn.TimedOut():
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.As(err, &no) && no.verb == "NO" && !strings.EqualFold(no.code, "TRYLATER"):
		return &SieveRefusal{Code: no.code, Text: no.text}
	case errors.As(err, &no), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// readCapabilities reads the capability lines up to the OK.
func (s *SieveSession) readCapabilities() error {
	lines, err := s.readResponse()
	if err != nil {
		return err
	}
	s.Capabilities = map[string]string{}
	for _, l := range lines {
		if len(l) > 0 {
			v := ""
			if len(l) > 1 {
				v = l[1]
			}
			s.Capabilities[strings.ToUpper(l[0])] = v
		}
	}
	return nil
}

// command sends one command line and reads its answer: the data lines
// before the OK, each as its strings and atoms.
func (s *SieveSession) command(line string) ([][]string, error) {
	if _, err := io.WriteString(s.conn, line+"\r\n"); err != nil {
		return nil, err
	}
	return s.readResponse()
}

// readResponse reads lines up to OK, NO or BYE.
func (s *SieveSession) readResponse() ([][]string, error) {
	var lines [][]string
	for {
		items, err := s.readLine()
		if err != nil {
			return nil, err
		}
		if len(items) > 0 {
			switch verb := strings.ToUpper(items[0]); verb {
			case "OK":
				return lines, nil
			case "NO", "BYE":
				no := &sieveNo{verb: verb}
				for _, it := range items[1:] {
					if strings.HasPrefix(it, "(") && no.code == "" && no.text == "" {
						no.code = strings.Trim(it, "()")
					} else {
						no.text = it
					}
				}
				return nil, no
			}
		}
		lines = append(lines, items)
	}
}

// maxSieveLiteral bounds one string the server sends (a script).
const maxSieveLiteral = 16 << 20

// readLine reads one response line: atoms, quoted strings and literals
// ({n} or {n+} then CRLF and n octets), a response code in parentheses
// kept as one item.
func (s *SieveSession) readLine() ([]string, error) {
	var items []string
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return nil, err
		}
		switch {
		case c == '\r':
			continue
		case c == '\n':
			return items, nil
		case c == ' ':
			continue
		case c == '"':
			var b strings.Builder
			for {
				c, err := s.r.ReadByte()
				if err != nil {
					return nil, err
				}
				if c == '\\' {
					if c, err = s.r.ReadByte(); err != nil {
						return nil, err
					}
				} else if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			items = append(items, b.String())
		case c == '{':
			spec, err := s.r.ReadString('}')
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(spec, "}"), "+"))
			if err != nil || n < 0 || n > maxSieveLiteral {
				return nil, fmt.Errorf("bad literal {%s", spec)
			}
			if crlf, err := s.r.ReadString('\n'); err != nil || strings.TrimRight(crlf, "\r\n") != "" {
				return nil, fmt.Errorf("bad literal {%s: %q", spec, crlf)
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(s.r, buf); err != nil {
				return nil, err
			}
			items = append(items, string(buf))
		case c == '(':
			code, err := s.r.ReadString(')')
			if err != nil {
				return nil, err
			}
			items = append(items, "("+code)
		default:
			var b strings.Builder
			b.WriteByte(c)
			for {
				c, err := s.r.ReadByte()
				if err != nil {
					return nil, err
				}
				if c == ' ' || c == '\r' || c == '\n' {
					s.r.UnreadByte()
					break
				}
				b.WriteByte(c)
			}
			items = append(items, b.String())
		}
	}
}

// quoteSieve makes a ManageSieve string: quoted when it can be, a
// literal otherwise.
func quoteSieve(v string) string {
	if len(v) < 1024 && !strings.ContainsAny(v, "\"\\\r\n") {
		return `"` + v + `"`
	}
	return fmt.Sprintf("{%d+}\r\n%s", len(v), v)
}
