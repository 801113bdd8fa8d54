package legacyclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/imapwire"
)

// IMAPSession is a connection logged in at the legacy IMAP server.
type IMAPSession struct {
	*Conn
	// R holds what the server sent past the login's answer.
	R *bufio.Reader
	// Caps are the capabilities the server announced last (upper case).
	Caps []string
	// OK is the text of the login's tagged OK (often with the capabilities
	// after login).
	OK string
}

// LoginIMAP connects to the IMAP endpoint and logs in: STARTTLS when
// configured, LOGIN, or AUTHENTICATE PLAIN where the server disables LOGIN
// or a master user acts for the account. The answer is read as Classify
// says: ErrBadCredentials for a refusal, ErrUnavailable for a temporary
// answer or a dropped connection, ErrTimeout for silence. The connection
// is closed if ctx ends before the login does.
func LoginIMAP(ctx context.Context, ep Endpoint, cred Credentials) (*IMAPSession, error) {
	c, err := ep.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("legacy imap %s: %w", ep.Address, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	s := &IMAPSession{Conn: c, R: bufio.NewReader(c)}
	err = s.login(ctx, ep, cred)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		} else if c.TimedOut() && !errors.Is(err, ErrTimeout) {
			err = fmt.Errorf("%w: %v", ErrTimeout, err)
		}
		return nil, fmt.Errorf("legacy imap %s: login %s: %w", ep.Address, cred.Username, err)
	}
	return s, nil
}

func (s *IMAPSession) login(ctx context.Context, ep Endpoint, cred Credentials) error {
	greeting, err := s.readLine()
	if err != nil {
		return err
	}
	switch {
	case strings.HasPrefix(greeting, "* BYE"):
		return fmt.Errorf("%w: greeting %q", ErrUnavailable, greeting)
	case !strings.HasPrefix(greeting, "* OK"):
		return fmt.Errorf("greeting %q", greeting)
	}
	s.Caps = capsOf(greeting)
	if ep.TLS == "starttls" {
		if line, err := s.command("m0", "m0 STARTTLS"); err != nil {
			return err
		} else if !strings.HasPrefix(line, "m0 OK") {
			return fmt.Errorf("STARTTLS: %s", line)
		}
		if err := s.StartTLS(ctx, ep); err != nil {
			return err
		}
		s.R.Reset(s.Conn)
		s.Caps = nil
	}
	if s.Caps == nil {
		if _, err := s.command("m1", "m1 CAPABILITY"); err != nil {
			return err
		}
	}
	var line string
	if cred.Authzid != "" || s.has("LOGINDISABLED") {
		resp := base64.StdEncoding.EncodeToString([]byte(cred.Authzid + "\x00" + cred.Username + "\x00" + cred.Password))
		if s.has("SASL-IR") {
			line, err = s.command("m2", "m2 AUTHENTICATE PLAIN "+resp)
		} else {
			line, err = s.continued("m2 AUTHENTICATE PLAIN", resp)
		}
	} else {
		line, err = s.loginCommand(cred)
	}
	if err != nil {
		return err
	}
	if err := Classify(line); err != nil {
		return err
	}
	_, s.OK, _ = strings.Cut(line, " OK")
	s.OK = strings.TrimSpace(s.OK)
	if c := capsOf(line); c != nil {
		s.Caps = c
	}
	return nil
}

// loginCommand sends LOGIN, with literals for what a quoted string cannot
// carry (non-synchronising with LITERAL+).
func (s *IMAPSession) loginCommand(cred Credentials) (string, error) {
	plus := s.has("LITERAL+")
	var parts []string // each ends where a synchronising literal waits
	cur := "m2 LOGIN"
	for _, arg := range []string{cred.Username, cred.Password} {
		if quotable(arg) {
			cur += " " + string(imapwire.AppendQuotedOrLiteral(nil, arg))
			continue
		}
		if plus {
			cur += fmt.Sprintf(" {%d+}\r\n%s", len(arg), arg)
			continue
		}
		parts = append(parts, cur+fmt.Sprintf(" {%d}", len(arg)))
		cur = arg
	}
	for _, p := range parts {
		if err := s.send(p); err != nil {
			return "", err
		}
		line, err := s.readLine()
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(line, "+") {
			return line, nil
		}
	}
	return s.command("m2", cur)
}

func quotable(s string) bool {
	return !strings.ContainsAny(s, "\r\n\x00") && !bytes.ContainsFunc([]byte(s), func(r rune) bool { return r >= 0x80 })
}

// continued sends a command that expects one continuation, then resp.
func (s *IMAPSession) continued(cmd, resp string) (string, error) {
	if err := s.send(cmd); err != nil {
		return "", err
	}
	line, err := s.readLine()
	if err != nil || !strings.HasPrefix(line, "+") {
		return line, err
	}
	return s.command("m2", resp)
}

func (s *IMAPSession) send(line string) error {
	if _, err := io.WriteString(s.Conn, line+"\r\n"); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// command sends a line and reads to the answer tagged tag.
func (s *IMAPSession) command(tag, line string) (string, error) {
	if err := s.send(line); err != nil {
		return "", err
	}
	for i := 0; i < 100; i++ {
		l, err := s.readLine()
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, tag+" ") {
			return l, nil
		}
		if strings.HasPrefix(strings.ToUpper(l), "* CAPABILITY ") {
			s.Caps = strings.Fields(strings.ToUpper(l[len("* CAPABILITY "):]))
		}
		if strings.HasPrefix(l, "* BYE") {
			return "", fmt.Errorf("%w: %s", ErrUnavailable, l)
		}
	}
	return "", errors.New("too many lines before the answer")
}

func (s *IMAPSession) readLine() (string, error) {
	line, err := s.R.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
			return "", fmt.Errorf("%w: connection closed (%v)", ErrUnavailable, err)
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func (s *IMAPSession) has(capability string) bool {
	for _, c := range s.Caps {
		if c == capability {
			return true
		}
	}
	return false
}

// capsOf reads "[CAPABILITY ...]" from a status line.
func capsOf(line string) []string {
	i := strings.Index(strings.ToUpper(line), "[CAPABILITY ")
	if i < 0 {
		return nil
	}
	rest := line[i+len("[CAPABILITY "):]
	end := strings.IndexByte(rest, ']')
	if end < 0 {
		return nil
	}
	return strings.Fields(strings.ToUpper(rest[:end]))
}

// Classify reads a tagged answer to a login: nil for OK; ErrUnavailable
// for a NO that says the server cannot check the credentials now
// (UNAVAILABLE, SERVERBUG, LIMIT, INUSE, CONTACTADMIN, OVERQUOTA,
// PRIVACYREQUIRED: RFC 5530 3) and for BYE; ErrBadCredentials for any
// other NO (no code, AUTHENTICATIONFAILED, ALERT...: a server that does
// not say why must not open a way around the failed-login limits); else
// a protocol error.
func Classify(tagged string) error {
	_, rest, _ := strings.Cut(tagged, " ")
	status, text, _ := strings.Cut(rest, " ")
	switch strings.ToUpper(status) {
	case "OK":
		return nil
	case "NO":
		code := ""
		if strings.HasPrefix(text, "[") {
			if end := strings.IndexByte(text, ']'); end > 0 {
				code, _, _ = strings.Cut(strings.ToUpper(text[1:end]), " ")
			}
		}
		switch code {
		case "UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "CONTACTADMIN", "OVERQUOTA", "PRIVACYREQUIRED":
			return fmt.Errorf("%w: %s", ErrUnavailable, text)
		}
		return fmt.Errorf("%w: %s", ErrBadCredentials, text)
	case "BYE":
		return fmt.Errorf("%w: %s", ErrUnavailable, text)
	}
	return fmt.Errorf("unexpected answer %q", tagged)
}

// Client returns a go-imap client on the logged-in session (for the
// capture's commands): it is told the session was authenticated from the
// start.
func (s *IMAPSession) Client() *imapclient.Client {
	greeting := "* PREAUTH "
	if len(s.Caps) > 0 {
		greeting += "[CAPABILITY " + strings.Join(s.Caps, " ") + "] "
	}
	greeting += "logged in\r\n"
	rc := &replayConn{Conn: s.Conn, r: io.MultiReader(strings.NewReader(greeting), s.R, s.Conn)}
	return imapclient.New(rc, &imapclient.Options{})
}

// replayConn reads what was read ahead before the connection itself.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// ClassifyIMAP turns an error of a go-imap command into the package's
// readings (a NO at login is refused credentials, as Classify says).
func ClassifyIMAP(c *Conn, err error) error {
	if c != nil && c.TimedOut() && !errors.Is(err, ErrTimeout) {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeBye {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
