// Package managesieve is a ManageSieve server (RFC 5804): users' mail
// clients list, read, upload, check, activate, rename and delete their
// Sieve scripts. What a command does is its Session's, which the
// Backend's login gives: the store for captured accounts, the legacy
// ManageSieve server for the others.
package managesieve

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Script is one of a user's scripts.
type Script struct {
	Name   string
	Active bool
}

// Error is a NO with a response code (RFC 5804 1.3: NONEXISTENT, ACTIVE,
// ALREADYEXISTS, QUOTA/MAXSIZE, QUOTA/MAXSCRIPTS, TRYLATER, ...).
type Error struct {
	Code, Text string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Text
	}
	return fmt.Sprintf("(%s) %s", e.Code, e.Text)
}

// Session is an authenticated user's view of their scripts.
type Session interface {
	ListScripts(ctx context.Context) ([]Script, error)
	GetScript(ctx context.Context, name string) ([]byte, error)
	PutScript(ctx context.Context, name string, body []byte) error
	CheckScript(ctx context.Context, body []byte) error
	SetActive(ctx context.Context, name string) error
	DeleteScript(ctx context.Context, name string) error
	RenameScript(ctx context.Context, from, to string) error
	HaveSpace(ctx context.Context, name string, size int) error
	// Ended is closed when the session must end (the account's cut-over):
	// the server says BYE between two commands.
	Ended() <-chan struct{}
	Close() error
}

// Login errors a Backend returns.
var (
	// ErrAuthFailed: wrong user name or password (NO).
	ErrAuthFailed = errors.New("authentication failed")
	// ErrTryLater: cannot be checked now, or too many failures (NO
	// (TRYLATER)).
	ErrTryLater = errors.New("try again later")
)

// Backend checks logins.
type Backend interface {
	Login(ctx context.Context, user, password string, remote net.Addr, log *slog.Logger) (Session, error)
}

// Server serves ManageSieve connections.
type Server struct {
	Backend   Backend
	TLSConfig *tls.Config
	// Trusted tells whether a client may authenticate without TLS.
	Trusted func(net.Addr) bool
	// Extensions is the SIEVE capability: the extensions scripts may use.
	Extensions string
	// MaxScriptBytes bounds an uploaded script. Default 1 MiB.
	MaxScriptBytes int
	// IdleTimeout closes a silent session. Default 30 min.
	IdleTimeout time.Duration
	Log         *slog.Logger

	connIDs atomic.Uint64
	mu      sync.Mutex
	lns     []net.Listener
	conns   map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) maxScript() int {
	if s.MaxScriptBytes <= 0 {
		return 1 << 20
	}
	return s.MaxScriptBytes
}

// Serve accepts connections until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.lns = append(s.lns, ln)
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			return err
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting, closes every connection and waits for them
// (at most until ctx ends).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		io.WriteString(c, "BYE \"server shutting down\"\r\n")
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// conn is one client connection.
type conn struct {
	srv     *Server
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	wmu     sync.Mutex
	log     *slog.Logger
	session Session
	tls     bool
	cmdMu   sync.Mutex // held while a command runs
	ended   bool       // the session was ended (BYE sent)
}

func (s *Server) serve(nc net.Conn) {
	c := &conn{srv: s, nc: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc),
		log: s.log().With("conn", fmt.Sprintf("managesieve-%d", s.connIDs.Add(1)), "proto", "managesieve", "remote", nc.RemoteAddr().String())}
	if _, ok := nc.(*tls.Conn); ok {
		c.tls = true
	}
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("a ManageSieve command panicked; the session was ended", "panic", r)
			c.reply("BYE \"internal error\"")
		}
		if c.session != nil {
			c.session.Close()
		}
		nc.Close()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.capabilities()
	watching := false
	for {
		nc.SetReadDeadline(time.Now().Add(orDuration(s.IdleTimeout, 30*time.Minute)))
		args, err := c.readCommand()
		if err != nil {
			var perr *protocolError
			if errors.As(err, &perr) {
				if perr.code != "" {
					c.reply("NO (" + perr.code + ") " + quote(perr.msg))
				} else {
					c.reply("NO " + quote(perr.msg))
				}
				continue
			}
			return
		}
		c.cmdMu.Lock()
		if c.ended {
			c.cmdMu.Unlock()
			return
		}
		quit := true
		if len(args) == 0 {
			c.reply(`NO "empty command"`)
			quit = false
		} else {
			quit = c.run(ctx, args)
		}
		c.cmdMu.Unlock()
		if quit {
			return
		}
		if c.session != nil && !watching {
			watching = true
			go c.endWhenAsked(ctx, c.session.Ended())
		}
	}
}

// endWhenAsked says BYE and closes the connection when the session must
// end, between two commands.
func (c *conn) endWhenAsked(ctx context.Context, ended <-chan struct{}) {
	select {
	case <-ended:
	case <-ctx.Done():
		return
	}
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	c.ended = true
	c.reply(`BYE (TRYLATER) "your mailbox has moved; please log in again"`)
	c.nc.Close()
}

// capabilities sends the capability listing (the greeting, after
// STARTTLS, and CAPABILITY).
func (c *conn) capabilities() {
	lines := []string{`"IMPLEMENTATION" "mailcapture"`, `"SIEVE" ` + quote(c.srv.Extensions), `"VERSION" "1.0"`,
		`"MAXREDIRECTS" "5"`}
	if c.mayAuth() {
		lines = append(lines, `"SASL" "PLAIN LOGIN"`)
	}
	if !c.tls && c.srv.TLSConfig != nil {
		lines = append(lines, `"STARTTLS"`)
	}
	lines = append(lines, `OK "mailcapture ManageSieve ready."`)
	c.reply(lines...)
}

func (c *conn) mayAuth() bool {
	return c.tls || c.srv.Trusted != nil && c.srv.Trusted(c.nc.RemoteAddr())
}

func (c *conn) reply(lines ...string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Minute))
	for _, l := range lines {
		c.w.WriteString(l)
		c.w.WriteString("\r\n")
	}
	c.w.Flush()
}

// no answers an error: a backend's *Error with its code, anything else
// as TRYLATER.
func (c *conn) no(err error) {
	var e *Error
	if errors.As(err, &e) {
		if e.Code != "" {
			c.reply(fmt.Sprintf("NO (%s) %s", e.Code, quote(e.Text)))
		} else {
			c.reply("NO " + quote(e.Text))
		}
		return
	}
	c.log.Warn("a ManageSieve command failed", "err", err)
	c.reply(`NO (TRYLATER) "temporary failure, try again later"`)
}

// run runs one command; it tells whether the session ends.
func (c *conn) run(ctx context.Context, args []string) bool {
	cmd := strings.ToUpper(args[0])
	args = args[1:]
	need := func(n int) bool {
		if len(args) != n {
			c.reply(fmt.Sprintf("NO \"%s takes %d arguments\"", cmd, n))
			return false
		}
		return true
	}
	switch cmd {
	case "LOGOUT":
		c.reply(`OK "Logout completed."`)
		return true
	case "CAPABILITY":
		c.capabilities()
		return false
	case "NOOP":
		c.reply(`OK "NOOP completed."`)
		return false
	case "STARTTLS":
		if c.tls || c.srv.TLSConfig == nil || c.session != nil {
			c.reply(`NO "STARTTLS is not available now"`)
			return false
		}
		c.reply(`OK "Begin TLS negotiation now."`)
		tc := tls.Server(c.nc, c.srv.TLSConfig)
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			c.log.Info("a ManageSieve TLS handshake failed", "err", err)
			return true
		}
		c.nc, c.tls = tc, true
		c.r, c.w = bufio.NewReader(tc), bufio.NewWriter(tc)
		c.capabilities() // RFC 5804 2.2
		return false
	case "AUTHENTICATE":
		if c.session != nil {
			c.reply(`NO "already authenticated"`)
			return false
		}
		if !c.mayAuth() {
			c.reply(`NO (ENCRYPT-NEEDED) "use STARTTLS first"`)
			return false
		}
		c.authenticate(ctx, args)
		return false
	}
	if c.session == nil {
		c.reply(`NO "authenticate first"`)
		return false
	}
	s := c.session
	switch cmd {
	case "LISTSCRIPTS":
		if !need(0) {
			return false
		}
		list, err := s.ListScripts(ctx)
		if err != nil {
			c.no(err)
			return false
		}
		var lines []string
		for _, sc := range list {
			l := quote(sc.Name)
			if sc.Active {
				l += " ACTIVE"
			}
			lines = append(lines, l)
		}
		c.reply(append(lines, `OK "Listscripts completed."`)...)
	case "GETSCRIPT":
		if !need(1) {
			return false
		}
		body, err := s.GetScript(ctx, args[0])
		if err != nil {
			c.no(err)
			return false
		}
		c.reply(fmt.Sprintf("{%d}\r\n%s", len(body), body), `OK "Getscript completed."`)
	case "PUTSCRIPT":
		if !need(2) {
			return false
		}
		if len(args[1]) > c.srv.maxScript() {
			c.reply(fmt.Sprintf("NO (QUOTA/MAXSIZE) \"script over %d bytes\"", c.srv.maxScript()))
			return false
		}
		c.done(s.PutScript(ctx, args[0], []byte(args[1])), "Putscript completed.")
	case "CHECKSCRIPT":
		if !need(1) {
			return false
		}
		c.done(s.CheckScript(ctx, []byte(args[0])), "Script is valid.")
	case "SETACTIVE":
		if !need(1) {
			return false
		}
		c.done(s.SetActive(ctx, args[0]), "Setactive completed.")
	case "DELETESCRIPT":
		if !need(1) {
			return false
		}
		c.done(s.DeleteScript(ctx, args[0]), "Deletescript completed.")
	case "RENAMESCRIPT":
		if !need(2) {
			return false
		}
		c.done(s.RenameScript(ctx, args[0], args[1]), "Renamescript completed.")
	case "HAVESPACE":
		if !need(2) {
			return false
		}
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 0 {
			c.reply(`NO "HAVESPACE needs a size"`)
			return false
		}
		if n > c.srv.maxScript() {
			c.reply(fmt.Sprintf("NO (QUOTA/MAXSIZE) \"script over %d bytes\"", c.srv.maxScript()))
			return false
		}
		c.done(s.HaveSpace(ctx, args[0], n), "Putscript would succeed.")
	default:
		c.reply(`NO "unknown command"`)
	}
	return false
}

func (c *conn) done(err error, ok string) {
	if err != nil {
		c.no(err)
		return
	}
	c.reply("OK " + quote(ok))
}

// authenticate runs AUTHENTICATE "PLAIN" / "LOGIN", with or without an
// initial response.
func (c *conn) authenticate(ctx context.Context, args []string) {
	if len(args) < 1 || len(args) > 2 {
		c.reply(`NO "AUTHENTICATE takes a mechanism and an optional initial response"`)
		return
	}
	challenge := func(prompt string) (string, bool) {
		c.reply(quote(base64.StdEncoding.EncodeToString([]byte(prompt))))
		resp, err := c.readCommand()
		if err != nil || len(resp) != 1 || resp[0] == "*" {
			c.reply(`NO "authentication cancelled"`)
			return "", false
		}
		dec, err := base64.StdEncoding.DecodeString(resp[0])
		if err != nil {
			c.reply(`NO "bad base64"`)
			return "", false
		}
		return string(dec), true
	}
	var user, pass string
	switch strings.ToUpper(args[0]) {
	case "PLAIN":
		var raw string
		if len(args) == 2 {
			dec, err := base64.StdEncoding.DecodeString(args[1])
			if err != nil {
				c.reply(`NO "bad base64"`)
				return
			}
			raw = string(dec)
		} else {
			var ok bool
			if raw, ok = challenge(""); !ok {
				return
			}
		}
		parts := strings.Split(raw, "\x00")
		if len(parts) != 3 || parts[0] != "" && parts[0] != parts[1] {
			c.reply(`NO "authentication failed"`)
			return
		}
		user, pass = parts[1], parts[2]
	case "LOGIN":
		var ok bool
		if len(args) == 2 {
			dec, err := base64.StdEncoding.DecodeString(args[1])
			if err != nil {
				c.reply(`NO "bad base64"`)
				return
			}
			user = string(dec)
		} else if user, ok = challenge("Username:"); !ok {
			return
		}
		if pass, ok = challenge("Password:"); !ok {
			return
		}
	default:
		c.reply(`NO "unsupported SASL mechanism"`)
		return
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := c.srv.Backend.Login(lctx, user, pass, c.nc.RemoteAddr(), c.log)
	switch {
	case errors.Is(err, ErrAuthFailed):
		c.reply(`NO "Authentication failed."`)
	case err != nil:
		c.reply(`NO (TRYLATER) "Authentication not possible now, try again later."`)
	default:
		c.session = s
		c.log = c.log.With("account", user)
		c.reply(`OK "Logged in."`)
	}
}

// protocolError is a command the server cannot read (answered NO, the
// session goes on).
type protocolError struct{ code, msg string }

func (e *protocolError) Error() string { return e.msg }

// maxLine bounds a command line without its literals.
const maxLine = 8 << 10

// readCommand reads one command: atoms, numbers, quoted strings and
// literals ({n+} or {n}, then CRLF and n octets).
func (c *conn) readCommand() ([]string, error) {
	var args []string
	lineBytes := 0
	for {
		b, err := c.r.ReadByte()
		if err != nil {
			return nil, err
		}
		lineBytes++
		if lineBytes > maxLine {
			c.skipLine()
			return nil, &protocolError{msg: "command line too long"}
		}
		switch {
		case b == '\n':
			return args, nil
		case b == '\r', b == ' ':
		case b == '"':
			var sb strings.Builder
			for {
				b, err := c.r.ReadByte()
				if err != nil {
					return nil, err
				}
				if lineBytes++; lineBytes > maxLine {
					c.skipLine()
					return nil, &protocolError{msg: "command line too long"}
				}
				if b == '\\' {
					if b, err = c.r.ReadByte(); err != nil {
						return nil, err
					}
				} else if b == '"' {
					break
				} else if b == '\n' {
					return nil, &protocolError{msg: "unterminated string"}
				}
				sb.WriteByte(b)
			}
			args = append(args, sb.String())
		case b == '{':
			spec, err := c.r.ReadString('}')
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(spec, "}"), "+"))
			if err != nil || n < 0 {
				c.skipLine()
				return nil, &protocolError{msg: "bad literal"}
			}
			if n > c.srv.maxScript() {
				if n > 4*c.srv.maxScript() {
					// Too much to read past: end the session.
					c.reply(fmt.Sprintf("BYE (QUOTA/MAXSIZE) \"literal over %d bytes\"", c.srv.maxScript()))
					return nil, errors.New("literal too large")
				}
				c.r.ReadString('\n')
				io.CopyN(io.Discard, c.r, int64(n))
				c.skipLine()
				return nil, &protocolError{code: "QUOTA/MAXSIZE", msg: fmt.Sprintf("scripts may have %d bytes at most", c.srv.maxScript())}
			}
			if rest, err := c.r.ReadString('\n'); err != nil || strings.TrimRight(rest, "\r\n") != "" {
				return nil, &protocolError{msg: "bad literal"}
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(c.r, buf); err != nil {
				return nil, err
			}
			args = append(args, string(buf))
		default:
			var sb strings.Builder
			sb.WriteByte(b)
			for {
				b, err := c.r.ReadByte()
				if err != nil {
					return nil, err
				}
				if b == ' ' || b == '\r' || b == '\n' {
					c.r.UnreadByte()
					break
				}
				if lineBytes++; lineBytes > maxLine {
					c.skipLine()
					return nil, &protocolError{msg: "command line too long"}
				}
				sb.WriteByte(b)
			}
			args = append(args, sb.String())
		}
	}
}

// skipLine reads up to the end of the line.
func (c *conn) skipLine() {
	for {
		b, err := c.r.ReadByte()
		if err != nil || b == '\n' {
			return
		}
	}
}

// quote is a quoted string, or a literal when it cannot be quoted.
func quote(s string) string {
	if len(s) < 1024 && !strings.ContainsAny(s, "\"\\\r\n") {
		return `"` + s + `"`
	}
	return fmt.Sprintf("{%d}\r\n%s", len(s), s)
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
