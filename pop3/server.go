package pop3

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
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailcapture/watchdog"

	"mailcapture/labels"
)

// Errors a Backend returns from Login.
var (
	// ErrAuthFailed: wrong user or password ("-ERR [AUTH]").
	ErrAuthFailed = errors.New("authentication failed")
	// ErrInUse: the maildrop is locked by another session ("-ERR [IN-USE]").
	ErrInUse = errors.New("maildrop in use")
	// ErrTemporary: the login cannot be served now, the client should try
	// again later ("-ERR [SYS/TEMP]", not logged as an error).
	ErrTemporary = errors.New("temporarily unavailable")
)

// Backend authenticates users and opens their maildrops.
type Backend interface {
	// Login checks the credentials and returns the user's maildrop,
	// locked for this session (RFC 1939 4). It returns ErrAuthFailed or
	// ErrInUse, or another error for a temporary failure ("-ERR
	// [SYS/TEMP]").
	Login(ctx context.Context, user, password string, remote net.Addr) (Maildrop, error)
}

// MessageInfo describes one message of a maildrop.
type MessageInfo struct {
	Size int64
	UIDL string
}

// Maildrop is one locked maildrop. The server never changes it before QUIT.
type Maildrop interface {
	// Messages lists the maildrop as it was at login; message n is
	// Messages()[n-1].
	Messages() []MessageInfo
	// Open returns the bytes of message i (0-based), exactly as stored.
	Open(ctx context.Context, i int) (io.ReadCloser, error)
	// Commit deletes the messages marked with DELE (0-based indexes), at
	// QUIT in the UPDATE state (RFC 1939 6).
	Commit(ctx context.Context, deleted []int) error
	// Close releases the lock; called once, whatever happened.
	Close()
}

// Server is a POP3 server (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC
// 5034 SASL PLAIN, RFC 3206 response codes).
type Server struct {
	Backend Backend
	// TLSConfig enables STLS; nil offers none.
	TLSConfig *tls.Config
	// Hostname appears in the greeting.
	Hostname string
	// InsecureAuthAllowed tells whether a client may send a password
	// before TLS (trusted networks). Nil allows loopback only.
	InsecureAuthAllowed func(remote net.Addr) bool
	// Limited, if set, is told when a limit ends or refuses something:
	// "timeout" (a session idle, or a command trickling in, for Timeout)
	// or "line_length".
	Limited func(limit labels.Limit)
	// Timeout closes a session idle for this long (RFC 1939: at least 10
	// minutes). Default 10m.
	Timeout time.Duration
	// WriteTimeout bounds each write to the client: a client that stops
	// reading (a RETR half read, for ever) is dropped. Default 1m.
	WriteTimeout time.Duration
	Log          *slog.Logger
	// SessionEnded, if set, is called after a session has ended and its
	// maildrop lock is released (for metrics and tests).
	SessionEnded func()
	// Panicked, if set, is called when a session panicked (it is ended,
	// the stack logged): for a metric.
	Panicked func()

	once sync.Once
	// ctx is the sessions' context (their logins), ended by Shutdown.
	ctx     context.Context
	cancel  context.CancelFunc
	connIDs atomic.Uint64

	mu       sync.Mutex
	listener []net.Listener
	conns    map[*session]struct{}
	closing  bool
	wg       sync.WaitGroup
}

const maxCommandLine = 1024 // RFC 2449: 255 octets; generous for AUTH

func (s *Server) limited(limit labels.Limit) {
	if s.Limited != nil {
		s.Limited(limit)
	}
}

func (s *Server) init() {
	s.once.Do(func() { s.ctx, s.cancel = context.WithCancel(context.Background()) })
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Serve accepts connections on ln until Shutdown. A listener for implicit
// TLS is wrapped by the caller (tls.NewListener).
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.listener = append(s.listener, ln)
	if s.conns == nil {
		s.conns = map[*session]struct{}{}
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
		sess := newSession(s, c)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.serve()
			s.mu.Lock()
			delete(s.conns, sess)
			s.mu.Unlock()
			if s.SessionEnded != nil {
				s.SessionEnded()
			}
		}()
	}
}

// Shutdown stops accepting, ends idle sessions with -ERR at their next
// command boundary, and waits for sessions to finish or ctx to end (then
// closes them; a session cut before QUIT deletes nothing).
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.cancel() // logins waiting for a slow backend give up
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.listener {
		ln.Close()
	}
	for sess := range s.conns {
		sess.stopAtBoundary()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for sess := range s.conns {
			sess.conn.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

type sessionState int

const (
	stateAuthorization sessionState = iota
	stateTransaction
)

type session struct {
	srv     *Server
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	log     *slog.Logger
	state   sessionState
	user    string
	drop    Maildrop
	msgs    []MessageInfo
	deleted map[int]bool
	tls     bool

	mu       sync.Mutex
	stopping bool
	busy     bool
}

// writer writes to c, each write within WriteTimeout; a failed write
// closes c, so the session ends at its next read.
func (s *Server) writer(c net.Conn) closingWriter {
	timeout := s.WriteTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	return closingWriter{watchdog.Writer{Conn: c, Timeout: timeout}}
}

// closingWriter closes the connection when a write fails: the client is
// gone, or stopped reading.
type closingWriter struct{ w watchdog.Writer }

func (c closingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.w.Conn.Close()
	}
	return n, err
}

func newSession(s *Server, c net.Conn) *session {
	_, isTLS := c.(*tls.Conn)
	return &session{srv: s, conn: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriter(s.writer(c)),
		log: s.log().With("conn", fmt.Sprintf("pop3-%d", s.connIDs.Add(1)), "proto", "pop3", "remote", c.RemoteAddr().String()), tls: isTLS}
}

// stopAtBoundary ends the session now if it waits for a command, else
// after the command in progress.
func (ss *session) stopAtBoundary() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.stopping = true
	if !ss.busy {
		ss.conn.SetReadDeadline(time.Now())
	}
}

func (ss *session) serve() {
	defer func() {
		if r := recover(); r != nil {
			ss.log.Error("a POP3 session panicked (a bug) and was ended", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			if ss.srv.Panicked != nil {
				ss.srv.Panicked()
			}
		}
		if ss.drop != nil {
			ss.drop.Close()
		}
		ss.conn.Close()
	}()
	host := ss.srv.Hostname
	if host == "" {
		host = "mailcapture"
	}
	ss.reply("+OK %s POP3 ready", host)
	timeout := ss.srv.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	for {
		ss.mu.Lock()
		if ss.stopping {
			ss.mu.Unlock()
			ss.reply("-ERR [SYS/TEMP] server shutting down")
			return
		}
		ss.busy = false
		ss.mu.Unlock()
		ss.conn.SetReadDeadline(time.Now().Add(timeout))
		line, err := ss.readLine()
		ss.mu.Lock()
		ss.busy = true
		stopping := ss.stopping
		ss.mu.Unlock()
		if err != nil {
			var ne net.Error
			switch {
			case stopping:
				ss.reply("-ERR [SYS/TEMP] server shutting down")
			case errors.Is(err, errLineTooLong):
				ss.srv.limited(labels.LineLength)
				ss.reply("-ERR line too long")
				continue
			case errors.As(err, &ne) && ne.Timeout():
				ss.srv.limited(labels.Timeout)
				ss.reply("-ERR [SYS/TEMP] autologout: idle for %s", timeout)
			}
			return
		}
		ss.conn.SetReadDeadline(time.Time{})
		cmd, arg, _ := strings.Cut(line, " ")
		if quit := ss.command(strings.ToUpper(cmd), arg); quit {
			return
		}
	}
}

var errLineTooLong = errors.New("line too long")

func (ss *session) readLine() (string, error) {
	line, err := ss.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxCommandLine {
		// Skip the rest of the overlong line.
		for err == bufio.ErrBufferFull {
			_, err = ss.r.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func (ss *session) reply(format string, args ...any) {
	fmt.Fprintf(ss.w, format, args...)
	ss.w.WriteString("\r\n")
	ss.w.Flush()
}

// command runs one command; it returns true when the session ends.
func (ss *session) command(cmd, arg string) bool {
	switch cmd {
	case "CAPA":
		ss.capa()
		return false
	case "QUIT":
		return ss.quit()
	case "NOOP":
		if ss.state != stateTransaction {
			ss.reply("-ERR not logged in")
			return false
		}
		ss.reply("+OK")
		return false
	}
	if ss.state == stateAuthorization {
		switch cmd {
		case "STLS":
			ss.stls()
		case "USER":
			ss.userCmd(arg)
		case "PASS":
			ss.pass(arg)
		case "AUTH":
			ss.auth(arg)
		case "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET":
			ss.reply("-ERR not logged in")
		default:
			// Not POP3, or not a command before login (a cross-protocol
			// request): the session ends at the first one.
			ss.srv.limited(labels.UnknownCommand)
			ss.reply("-ERR unknown command")
			return true
		}
		return false
	}
	switch cmd {
	case "STAT":
		n, size := 0, int64(0)
		for i, m := range ss.msgs {
			if !ss.deleted[i] {
				n++
				size += m.Size
			}
		}
		ss.reply("+OK %d %d", n, size)
	case "LIST", "UIDL":
		ss.listing(cmd, arg)
	case "RETR":
		if i, ok := ss.messageArg(arg); ok {
			ss.send(i, -1)
		}
	case "TOP":
		num, lines, _ := strings.Cut(arg, " ")
		n, err := strconv.Atoi(strings.TrimSpace(lines))
		if i, ok := ss.messageArg(num); ok {
			if err != nil || n < 0 {
				ss.reply("-ERR TOP needs a message number and a line count")
				return false
			}
			ss.send(i, n)
		}
	case "DELE":
		if i, ok := ss.messageArg(arg); ok {
			ss.deleted[i] = true
			ss.reply("+OK message %d deleted", i+1)
		}
	case "RSET":
		ss.deleted = map[int]bool{}
		ss.reply("+OK")
	case "STLS", "USER", "PASS", "AUTH":
		ss.reply("-ERR already logged in")
	default:
		ss.reply("-ERR unknown command")
	}
	return false
}

func (ss *session) capa() {
	lines := []string{"+OK capability list follows", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"}
	if ss.state == stateAuthorization {
		if ss.srv.TLSConfig != nil && !ss.tls {
			lines = append(lines, "STLS")
		}
		if ss.authAllowed() {
			lines = append(lines, "USER", "SASL PLAIN LOGIN")
		}
	}
	lines = append(lines, "IMPLEMENTATION mailcapture", ".")
	ss.w.WriteString(strings.Join(lines, "\r\n") + "\r\n")
	ss.w.Flush()
}

func (ss *session) authAllowed() bool {
	if ss.tls {
		return true
	}
	if ss.srv.InsecureAuthAllowed != nil {
		return ss.srv.InsecureAuthAllowed(ss.conn.RemoteAddr())
	}
	if a, ok := ss.conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.IsLoopback()
	}
	return false
}

func (ss *session) stls() {
	if ss.srv.TLSConfig == nil || ss.tls {
		ss.reply("-ERR STLS not available")
		return
	}
	ss.reply("+OK begin TLS negotiation")
	tc := tls.Server(ss.conn, ss.srv.TLSConfig)
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		ss.log.Info("pop3 STLS handshake failed", "err", err)
		ss.conn.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	ss.conn, ss.tls = tc, true
	ss.r.Reset(tc) // RFC 2595 4: discard anything sent before the handshake
	ss.w.Reset(ss.srv.writer(tc))
	ss.user = ""
}

func (ss *session) userCmd(arg string) {
	if !ss.authAllowed() {
		ss.reply("-ERR [AUTH] use STLS first")
		return
	}
	if arg == "" {
		ss.reply("-ERR USER needs a name")
		return
	}
	ss.user = arg
	ss.reply("+OK send PASS")
}

func (ss *session) pass(arg string) {
	if ss.user == "" {
		ss.reply("-ERR send USER first")
		return
	}
	user := ss.user
	ss.user = ""
	ss.login(user, arg)
}

// auth handles AUTH PLAIN and AUTH LOGIN (RFC 5034), with the initial
// response on the line or after a "+ " continuation. Challenge-response
// mechanisms are not offered: they carry no password to check.
func (ss *session) auth(arg string) {
	mech, initial, hasInitial := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech == "" {
		// What Outlook sends to learn the mechanisms.
		ss.reply("+OK\r\nPLAIN\r\nLOGIN\r\n.")
		return
	}
	if mech != "PLAIN" && mech != "LOGIN" {
		ss.reply("-ERR unsupported mechanism: use PLAIN or LOGIN")
		return
	}
	if !ss.authAllowed() {
		ss.reply("-ERR [AUTH] use STLS first")
		return
	}
	// next returns the next SASL response: the initial one, or one asked
	// for with challenge.
	next := func(challenge string) ([]byte, bool) {
		resp := initial
		if hasInitial {
			hasInitial = false
		} else {
			ss.reply("+ %s", challenge)
			line, err := ss.readLine()
			if err != nil {
				ss.reply("-ERR authentication aborted")
				return nil, false
			}
			resp = line
		}
		if resp == "*" {
			ss.reply("-ERR authentication cancelled")
			return nil, false
		}
		if resp == "=" {
			resp = ""
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(resp))
		if err != nil {
			ss.reply("-ERR [AUTH] malformed response")
			return nil, false
		}
		return raw, true
	}
	if mech == "LOGIN" {
		user, ok := next(base64.StdEncoding.EncodeToString([]byte("Username:")))
		if !ok {
			return
		}
		pass, ok := next(base64.StdEncoding.EncodeToString([]byte("Password:")))
		if !ok {
			return
		}
		ss.login(string(user), string(pass))
		return
	}
	raw, ok := next("")
	if !ok {
		return
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) {
		ss.reply("-ERR [AUTH] authentication failed")
		return
	}
	ss.login(parts[1], parts[2])
}

func (ss *session) login(user, password string) {
	ss.srv.init()
	ctx, cancel := context.WithTimeout(ss.srv.ctx, time.Minute)
	defer cancel()
	drop, err := ss.srv.Backend.Login(ctx, user, password, ss.conn.RemoteAddr())
	switch {
	case errors.Is(err, ErrAuthFailed):
		ss.reply("-ERR [AUTH] authentication failed")
		return
	case errors.Is(err, ErrInUse):
		ss.reply("-ERR [IN-USE] maildrop is locked by another session")
		return
	case errors.Is(err, ErrTemporary):
		ss.reply("-ERR [SYS/TEMP] temporary failure, try again in a minute")
		return
	case err != nil:
		ss.log.Error("a POP3 login could not be checked", "user", user, "err", err)
		ss.reply("-ERR [SYS/TEMP] temporary failure, try again later")
		return
	}
	ss.drop, ss.msgs, ss.deleted = drop, drop.Messages(), map[int]bool{}
	ss.state = stateTransaction
	ss.log = ss.log.With("user", user)
	var size int64
	for _, m := range ss.msgs {
		size += m.Size
	}
	ss.reply("+OK maildrop has %d messages (%d octets)", len(ss.msgs), size)
}

// messageArg parses a message number that exists and is not deleted.
func (ss *session) messageArg(arg string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(arg))
	if err != nil || n < 1 || n > len(ss.msgs) {
		ss.reply("-ERR no such message")
		return 0, false
	}
	if ss.deleted[n-1] {
		ss.reply("-ERR message %d already deleted", n)
		return 0, false
	}
	return n - 1, true
}

func (ss *session) listing(cmd, arg string) {
	entry := func(i int) string {
		if cmd == "LIST" {
			return fmt.Sprintf("%d %d", i+1, ss.msgs[i].Size)
		}
		return fmt.Sprintf("%d %s", i+1, ss.msgs[i].UIDL)
	}
	if strings.TrimSpace(arg) != "" {
		if i, ok := ss.messageArg(arg); ok {
			ss.reply("+OK %s", entry(i))
		}
		return
	}
	ss.w.WriteString("+OK\r\n")
	for i := range ss.msgs {
		if !ss.deleted[i] {
			ss.w.WriteString(entry(i) + "\r\n")
		}
	}
	ss.w.WriteString(".\r\n")
	ss.w.Flush()
}

// send writes message i dot-stuffed; bodyLines >= 0 sends the header and
// that many body lines (TOP).
func (ss *session) send(i, bodyLines int) {
	// A transfer under way finishes during a stop: Shutdown waits for it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ss.srv.ctx), 10*time.Minute)
	defer cancel()
	rc, err := ss.drop.Open(ctx, i)
	if err != nil {
		ss.log.Error("a message could not be read for a POP3 client", "n", i+1, "err", err)
		ss.reply("-ERR [SYS/TEMP] cannot read message %d", i+1)
		return
	}
	defer rc.Close()
	ss.w.WriteString(fmt.Sprintf("+OK %d octets\r\n", ss.msgs[i].Size))
	dw := &dotWriter{w: ss.w, atLineStart: true, bodyLines: bodyLines}
	if _, err := io.Copy(dw, rc); err != nil && !errors.Is(err, errTopDone) {
		// The client has a partial message and no terminator: close so it
		// cannot take it for whole.
		ss.log.Error("a message could not be sent to a POP3 client; the connection was closed", "n", i+1, "err", err)
		ss.conn.Close()
		return
	}
	dw.finish()
	ss.w.Flush()
}

func (ss *session) quit() bool {
	if ss.state != stateTransaction {
		ss.reply("+OK bye")
		return true
	}
	var deleted []int
	for i := range ss.msgs {
		if ss.deleted[i] {
			deleted = append(deleted, i)
		}
	}
	if len(deleted) > 0 {
		// The user's QUIT is carried out during a stop too.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ss.srv.ctx), time.Minute)
		defer cancel()
		if err := ss.drop.Commit(ctx, deleted); err != nil {
			ss.log.Error("the deletions of a POP3 session could not be saved", "err", err)
			ss.reply("-ERR [SYS/TEMP] some deleted messages not removed")
			return true
		}
	}
	// Unlock before answering: a client that logs in again right after
	// our +OK must find the maildrop free.
	ss.drop.Close()
	ss.drop = nil
	ss.reply("+OK bye, %d messages deleted", len(deleted))
	return true
}

var errTopDone = errors.New("top: enough lines")

// dotWriter dot-stuffs a message (RFC 1939 3) and, for TOP, stops after the
// header and bodyLines lines of body. Line ends pass unchanged.
type dotWriter struct {
	w           *bufio.Writer
	atLineStart bool
	inBody      bool
	lineLen     int // bytes of the current line other than CR
	bodyLines   int // -1: whole message
	stopped     bool
}

func (d *dotWriter) Write(p []byte) (int, error) {
	for i, b := range p {
		if d.stopped {
			return i, errTopDone
		}
		if d.atLineStart {
			if d.inBody && d.bodyLines == 0 {
				d.stopped = true
				return i, errTopDone
			}
			if b == '.' {
				d.w.WriteByte('.')
			}
			d.atLineStart = false
		}
		d.w.WriteByte(b)
		switch b {
		case '\n':
			d.atLineStart = true
			if d.inBody && d.bodyLines > 0 {
				d.bodyLines--
			}
			if !d.inBody && d.lineLen == 0 {
				d.inBody = true // the empty line that ends the header
			}
			d.lineLen = 0
		case '\r':
		default:
			d.lineLen++
		}
	}
	return len(p), nil
}

// finish ends the message with CRLF if needed and the terminating dot.
func (d *dotWriter) finish() {
	if !d.atLineStart {
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
}
