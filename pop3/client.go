// Package pop3 speaks POP3 (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC
// 5034 SASL PLAIN), byte-exact: message bodies keep their line ends and
// their long lines, and dot-stuffing is undone exactly.
package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Error is a -ERR answer. Code is the RFC 2449/3206 response code, if any
// ("AUTH", "IN-USE", "SYS/TEMP", ...).
type Error struct {
	Command string
	Code    string
	Text    string
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("pop3 %s: -ERR [%s] %s", e.Command, e.Code, e.Text)
	}
	return fmt.Sprintf("pop3 %s: -ERR %s", e.Command, e.Text)
}

// ErrTimeout means the server did not answer within the client's timeout.
var ErrTimeout = errors.New("pop3 server did not answer in time")

// maxLine bounds a status or listing line (RFC 2449 allows 512 octets; we
// are generous).
const maxLine = 8192

// Client is a POP3 client connection. Commands are not safe for concurrent
// use; a message reader must be read to its end before the next command.
type Client struct {
	conn    net.Conn
	timeout time.Duration
	r       *bufio.Reader
	w       *bufio.Writer
	caps    map[string][]string
	stopCtx func() bool
}

// DialOptions describe how to reach the server.
type DialOptions struct {
	// TLS is "none", "starttls" (STLS) or "implicit".
	TLS       string
	TLSConfig *tls.Config
	// Timeout bounds connecting and every wait for the server. Default 1m.
	Timeout time.Duration
}

// Dial connects, reads the greeting and, for "starttls", upgrades with
// STLS. The connection is closed when ctx ends.
func Dial(ctx context.Context, addr string, opts DialOptions) (*Client, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pop3 %s: %w", addr, err)
	}
	if opts.TLS == "implicit" {
		tc := tls.Client(nc, tlsConfig(opts.TLSConfig, addr))
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("pop3 %s: tls: %w", addr, err)
		}
		nc = tc
	}
	c, err := NewClient(nc, timeout)
	if err != nil {
		return nil, fmt.Errorf("pop3 %s: %w", addr, err)
	}
	c.stopCtx = context.AfterFunc(ctx, func() { c.conn.Close() })
	if opts.TLS == "starttls" {
		if err := c.StartTLS(tlsConfig(opts.TLSConfig, addr)); err != nil {
			c.Close()
			return nil, fmt.Errorf("pop3 %s: %w", addr, err)
		}
	}
	return c, nil
}

// NewClient reads the greeting on a connection made by the caller; every
// wait for the server is bounded by timeout. The connection is closed on
// error.
func NewClient(nc net.Conn, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = time.Minute
	}
	c := newClient(nc, timeout)
	if _, err := c.status("greeting"); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func tlsConfig(cfg *tls.Config, addr string) *tls.Config {
	if cfg != nil {
		return cfg.Clone()
	}
	host, _, _ := net.SplitHostPort(addr)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

func newClient(nc net.Conn, timeout time.Duration) *Client {
	c := &Client{conn: nc, timeout: timeout}
	c.r = bufio.NewReaderSize(readerFunc(c.read), 64*1024)
	c.w = bufio.NewWriter(nc)
	return c
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// read reads with a deadline pushed forward on every call: a silent
// server fails the command after the timeout, a slow steady one does not.
func (c *Client) read(p []byte) (int, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	n, err := c.conn.Read(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return n, err
}

// Close drops the connection without QUIT (a dropped session applies no
// deletions).
func (c *Client) Close() error {
	if c.stopCtx != nil {
		c.stopCtx()
	}
	return c.conn.Close()
}

func (c *Client) send(cmd string) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.w.WriteString(cmd + "\r\n"); err != nil {
		return err
	}
	return c.w.Flush()
}

// readLine reads one CRLF- or LF-terminated line, without its line end.
func (c *Client) readLine() (string, error) {
	var b []byte
	for {
		part, err := c.r.ReadSlice('\n')
		b = append(b, part...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
		if len(b) > maxLine {
			return "", fmt.Errorf("pop3: server line longer than %d bytes", maxLine)
		}
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// status reads a +OK/-ERR line and returns the text after +OK.
func (c *Client) status(command string) (string, error) {
	line, err := c.readLine()
	if err != nil {
		return "", fmt.Errorf("pop3 %s: %w", command, err)
	}
	switch {
	case strings.HasPrefix(line, "+OK"):
		return strings.TrimPrefix(strings.TrimPrefix(line, "+OK"), " "), nil
	case strings.HasPrefix(line, "-ERR"):
		text := strings.TrimPrefix(strings.TrimPrefix(line, "-ERR"), " ")
		e := &Error{Command: command, Text: text}
		if strings.HasPrefix(text, "[") {
			if end := strings.IndexByte(text, ']'); end > 0 {
				e.Code, e.Text = text[1:end], strings.TrimSpace(text[end+1:])
			}
		}
		return "", e
	}
	return "", fmt.Errorf("pop3 %s: unexpected answer %q", command, truncate(line))
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// cmd sends a command and reads its status line.
func (c *Client) cmd(name, line string) (string, error) {
	if err := c.send(line); err != nil {
		return "", fmt.Errorf("pop3 %s: %w", name, err)
	}
	return c.status(name)
}

// Capa returns the server's capabilities (RFC 2449), upper-cased names to
// their arguments. A server without CAPA gives an empty map.
func (c *Client) Capa() (map[string][]string, error) {
	if c.caps != nil {
		return c.caps, nil
	}
	caps := map[string][]string{}
	if _, err := c.cmd("CAPA", "CAPA"); err != nil {
		var perr *Error
		if errors.As(err, &perr) {
			c.caps = caps
			return caps, nil
		}
		return nil, err
	}
	lines, err := c.multiline("CAPA")
	if err != nil {
		return nil, err
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 0 {
			caps[strings.ToUpper(f[0])] = f[1:]
		}
	}
	c.caps = caps
	return caps, nil
}

// maxListing bounds the entries of one listing (CAPA, LIST, UIDL): far
// above any real maildrop, it keeps a broken server from exhausting memory.
const maxListing = 5_000_000

// multiline reads a dot-terminated listing, un-stuffed, one entry a line.
func (c *Client) multiline(command string) ([]string, error) {
	var out []string
	for {
		if len(out) >= maxListing {
			return nil, fmt.Errorf("pop3 %s: more than %d lines", command, maxListing)
		}
		line, err := c.readLine()
		if err != nil {
			return nil, fmt.Errorf("pop3 %s: %w", command, err)
		}
		if line == "." {
			return out, nil
		}
		out = append(out, strings.TrimPrefix(line, "."))
	}
}

// StartTLS upgrades the connection with STLS.
func (c *Client) StartTLS(cfg *tls.Config) error {
	if _, err := c.cmd("STLS", "STLS"); err != nil {
		return err
	}
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(c.timeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("pop3 STLS: %w", err)
	}
	tc.SetDeadline(time.Time{})
	c.conn = tc
	c.r.Reset(readerFunc(c.read))
	c.w.Reset(tc)
	c.caps = nil // capabilities may change after STLS
	return nil
}

// Login authenticates with USER/PASS, or with AUTH PLAIN when the server
// announces SASL PLAIN but not USER.
func (c *Client) Login(user, password string) error {
	caps, err := c.Capa()
	if err != nil {
		return err
	}
	_, hasUser := caps["USER"]
	if !hasUser && hasMech(caps, "PLAIN") {
		return c.AuthPlain(user, password)
	}
	if strings.ContainsAny(user+password, "\r\n") {
		return errors.New("pop3 USER/PASS: credentials contain a line break")
	}
	if _, err := c.cmd("USER", "USER "+user); err != nil {
		return err
	}
	_, err = c.cmd("PASS", "PASS "+password)
	return err
}

func hasMech(caps map[string][]string, mech string) bool {
	for _, m := range caps["SASL"] {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// AuthPlain authenticates with AUTH PLAIN (RFC 5034), the initial response
// on the command line.
func (c *Client) AuthPlain(user, password string) error {
	return c.AuthPlainAs("", user, password)
}

// AuthPlainAs authenticates as user and asks to act as authzid (a master
// user logging in for an account); an empty authzid acts as user.
func (c *Client) AuthPlainAs(authzid, user, password string) error {
	resp := base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + user + "\x00" + password))
	_, err := c.cmd("AUTH", "AUTH PLAIN "+resp)
	return err
}

// Stat returns the number of messages and their total size.
func (c *Client) Stat() (count int, size int64, err error) {
	text, err := c.cmd("STAT", "STAT")
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(text, "%d %d", &count, &size); err != nil {
		return 0, 0, fmt.Errorf("pop3 STAT: cannot read %q", truncate(text))
	}
	return count, size, nil
}

// ListEntry is one message of a LIST answer.
type ListEntry struct {
	Num  int
	Size int64
}

// List returns every message's number and size.
func (c *Client) List() ([]ListEntry, error) {
	if _, err := c.cmd("LIST", "LIST"); err != nil {
		return nil, err
	}
	lines, err := c.multiline("LIST")
	if err != nil {
		return nil, err
	}
	out := make([]ListEntry, 0, len(lines))
	for _, l := range lines {
		var e ListEntry
		if _, err := fmt.Sscanf(l, "%d %d", &e.Num, &e.Size); err != nil {
			return nil, fmt.Errorf("pop3 LIST: cannot read %q", truncate(l))
		}
		out = append(out, e)
	}
	return out, nil
}

// UIDLEntry is one message of a UIDL answer.
type UIDLEntry struct {
	Num  int
	UIDL string
}

// UIDL returns every message's unique id.
func (c *Client) UIDL() ([]UIDLEntry, error) {
	if _, err := c.cmd("UIDL", "UIDL"); err != nil {
		return nil, err
	}
	lines, err := c.multiline("UIDL")
	if err != nil {
		return nil, err
	}
	out := make([]UIDLEntry, 0, len(lines))
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			return nil, fmt.Errorf("pop3 UIDL: cannot read %q", truncate(l))
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("pop3 UIDL: cannot read %q", truncate(l))
		}
		out = append(out, UIDLEntry{Num: n, UIDL: f[1]})
	}
	return out, nil
}

// Retr returns message n, un-stuffed, byte for byte as the server holds
// it. Read it to its end before the next command.
func (c *Client) Retr(n int) (io.Reader, error) {
	if _, err := c.cmd("RETR", "RETR "+strconv.Itoa(n)); err != nil {
		return nil, err
	}
	return &dotReader{r: c.r, atLineStart: true}, nil
}

// Top returns the header of message n and its first lines of body.
func (c *Client) Top(n, lines int) (io.Reader, error) {
	if _, err := c.cmd("TOP", fmt.Sprintf("TOP %d %d", n, lines)); err != nil {
		return nil, err
	}
	return &dotReader{r: c.r, atLineStart: true}, nil
}

// Dele marks message n for deletion at QUIT.
func (c *Client) Dele(n int) error {
	_, err := c.cmd("DELE", "DELE "+strconv.Itoa(n))
	return err
}

// Rset unmarks every message marked for deletion.
func (c *Client) Rset() error {
	_, err := c.cmd("RSET", "RSET")
	return err
}

// Noop keeps the session alive.
func (c *Client) Noop() error {
	_, err := c.cmd("NOOP", "NOOP")
	return err
}

// Quit ends the session, applying deletions, and closes the connection.
func (c *Client) Quit() error {
	_, err := c.cmd("QUIT", "QUIT")
	c.Close()
	return err
}

// dotReader undoes dot-stuffing (RFC 1939 3): a line starting with "." loses
// that dot, and a line that is only "." ends the message. Everything else,
// line ends included, passes unchanged; lines longer than the buffer pass
// through in pieces.
type dotReader struct {
	r           *bufio.Reader
	atLineStart bool
	pending     []byte
	done        bool
}

func (d *dotReader) Read(p []byte) (int, error) {
	for len(d.pending) == 0 {
		if d.done {
			return 0, io.EOF
		}
		part, err := d.r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		startsLine := d.atLineStart
		d.atLineStart = err == nil // the next piece starts a line if this one ended it
		if startsLine && len(part) > 0 && part[0] == '.' {
			if string(part) == ".\r\n" || string(part) == ".\n" {
				d.done = true
				return 0, io.EOF
			}
			part = part[1:]
		}
		d.pending = part
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}
