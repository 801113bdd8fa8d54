package front

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/capture"
	"mailcapture/imapstore"
	"mailcapture/store"
	"mailcapture/watchdog"
)

// IMAPFront is the IMAP front end: it handles the not-authenticated state
// itself, then serves captured accounts from the store (go-imap's
// imapserver over imapstore) and splices the others to the legacy server,
// logged in with the user's own credentials.
type IMAPFront struct {
	Router *Router
	Local  *imapstore.Backend
	Legacy capture.Endpoint
	// TLSConfig enables STARTTLS; nil offers none.
	TLSConfig *tls.Config
	// Trusted tells whether a peer may log in without TLS. Nil trusts
	// loopback only.
	Trusted func(net.Addr) bool
	// IdleTimeout closes a proxied session whose client sent nothing for
	// this long (the legacy server has its own). Default 30 minutes.
	IdleTimeout time.Duration
	// PreauthTimeout bounds each command before login, bytes trickled in
	// included (slowloris). Default 1 minute.
	PreauthTimeout time.Duration
	// WriteTimeout bounds each write to a client, before login, in a
	// proxied session and in a local one: a client that stops reading is
	// dropped, one that reads slowly is not. Default 1 minute.
	WriteTimeout time.Duration
	Log          *slog.Logger

	once      sync.Once
	local     *imapserver.Server
	handoff   *handoffListener
	localDone chan struct{} // closed when the local server's Serve returns

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	handed    map[*handedConn]struct{} // sessions of the local server
	closing   bool
	wg        sync.WaitGroup
	proxied   sessions
}

// EndSessions ends the account's proxied sessions at their next command
// boundary with * BYE (at the latest when ctx ends) and returns once they
// are closed.
func (f *IMAPFront) EndSessions(ctx context.Context, account string) {
	var wg sync.WaitGroup
	for _, p := range f.proxied.of(account) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.end(ctx, "your mailbox has moved; please log in again")
		}()
	}
	wg.Wait()
}

func (f *IMAPFront) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

func (f *IMAPFront) init() {
	f.once.Do(func() {
		f.conns = map[net.Conn]struct{}{}
		f.handed = map[*handedConn]struct{}{}
		f.handoff = newHandoffListener()
		f.local = imapserver.New(&imapserver.Options{
			NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
				hc, ok := c.NetConn().(*handedConn)
				if !ok {
					return nil, nil, errors.New("connection not handed over by the front end")
				}
				return f.Local.NewSession(hc.account, hc), &imapserver.GreetingData{PreAuth: true}, nil
			},
			Caps:         imapstore.Caps,
			InsecureAuth: true, // the front end has checked TLS already
		})
		f.localDone = make(chan struct{})
		go func() {
			f.local.Serve(f.handoff)
			close(f.localDone)
		}()
	})
}

// Serve accepts IMAP connections (wrap ln with tls.NewListener for
// implicit TLS) until Shutdown.
func (f *IMAPFront) Serve(ln net.Listener) error {
	f.init()
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return net.ErrClosed
	}
	f.listeners = append(f.listeners, ln)
	f.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			f.mu.Lock()
			closing := f.closing
			f.mu.Unlock()
			if closing {
				return nil
			}
			return err
		}
		f.mu.Lock()
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			final, handedOver := f.serveConn(c)
			f.mu.Lock()
			delete(f.conns, final)
			f.mu.Unlock()
			if !handedOver {
				final.Close()
			}
		}()
	}
}

// Shutdown stops accepting, closes sessions still in the front end or
// proxied (with BYE), and closes the local server's sessions.
func (f *IMAPFront) Shutdown(ctx context.Context) error {
	f.init()
	f.mu.Lock()
	f.closing = true
	for _, ln := range f.listeners {
		ln.Close()
	}
	handed := make([]*handedConn, 0, len(f.handed))
	for c := range f.handed {
		handed = append(handed, c)
	}
	f.mu.Unlock()
	// Every session ends with * BYE between two commands: proxied ones at
	// their next command boundary, local ones once the server waits for the
	// next command, those not logged in yet at once (bounded by ctx).
	var ending sync.WaitGroup
	for _, p := range f.proxied.all() {
		ending.Add(1)
		go func() {
			defer ending.Done()
			p.end(ctx, "server shutting down, please reconnect")
		}()
	}
	for _, c := range handed {
		ending.Add(1)
		go func() {
			defer ending.Done()
			c.byeWhenIdle(ctx, "* BYE [UNAVAILABLE] server shutting down, please reconnect\r\n")
		}()
	}
	f.mu.Lock()
	for c := range f.conns { // not logged in yet
		io.WriteString(c, "* BYE [UNAVAILABLE] server shutting down\r\n")
		c.Close()
	}
	f.mu.Unlock()
	ending.Wait()
	// Let the local server's Serve return before closing it: go-imap's
	// server does not take Close concurrent with Serve's start.
	f.handoff.Close()
	<-f.localDone
	f.local.Close()
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// session is one connection in the front end.
type session struct {
	f    *IMAPFront
	conn net.Conn
	r    *bufio.Reader
	log  *slog.Logger
	tls  bool
}

const preauthCaps = "IMAP4rev1 LITERAL+ SASL-IR ID"

func (s *session) caps() string {
	c := preauthCaps
	if s.f.TLSConfig != nil && !s.tls {
		c += " STARTTLS"
	}
	if s.authAllowed() {
		c += " AUTH=PLAIN"
	} else {
		c += " LOGINDISABLED"
	}
	return c
}

func (s *session) authAllowed() bool {
	if s.tls {
		return true
	}
	if s.f.Trusted != nil {
		return s.f.Trusted(s.conn.RemoteAddr())
	}
	a, ok := s.conn.RemoteAddr().(*net.TCPAddr)
	return ok && a.IP.IsLoopback()
}

func (s *session) write(format string, args ...any) error {
	s.conn.SetWriteDeadline(time.Now().Add(orDuration(s.f.WriteTimeout, time.Minute)))
	_, err := fmt.Fprintf(s.conn, format+"\r\n", args...)
	return err
}

// serveConn runs the not-authenticated state. It returns the connection
// as it ended (a TLS one after STARTTLS), and true when it was handed to
// the local server, which then owns it.
func (f *IMAPFront) serveConn(c net.Conn) (final net.Conn, handedOver bool) {
	_, isTLS := c.(*tls.Conn)
	s := &session{f: f, conn: c, r: bufio.NewReaderSize(c, 4096), tls: isTLS,
		log: f.log().With("proto", "imap", "remote", c.RemoteAddr().String())}
	defer func() {
		final = s.conn
		if r := recover(); r != nil {
			s.log.Error("imap front end panic", "panic", r, "stack", string(debug.Stack()))
			handedOver = false
		}
	}()
	if s.write("* OK [CAPABILITY %s] mailcapture ready", s.caps()) != nil {
		return s.conn, false
	}
	for {
		// The whole command must arrive within the timeout, however
		// slowly its bytes trickle in.
		s.conn.SetReadDeadline(time.Now().Add(orDuration(f.PreauthTimeout, time.Minute)))
		cmd, err := readPreauthCommand(s.r, func() error { return s.write("+ Ready for literal data") })
		if errors.Is(err, errTooLong) {
			f.Router.observer().Refused("line_length")
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			f.Router.observer().Refused("timeout")
			s.write("* BYE [UNAVAILABLE] autologout: no command within %s", orDuration(f.PreauthTimeout, time.Minute))
			return s.conn, false
		}
		if errors.Is(err, errBadCommand) {
			tag := "*"
			if cmd != nil && cmd.tag != "" {
				tag = cmd.tag
			}
			if s.write("%s BAD %s", tag, "malformed command") != nil {
				return s.conn, false
			}
			continue
		}
		if err != nil {
			return s.conn, false
		}
		s.conn.SetReadDeadline(time.Time{})
		switch cmd.name {
		case "CAPABILITY":
			s.write("* CAPABILITY %s", s.caps())
			s.write("%s OK CAPABILITY completed", cmd.tag)
		case "NOOP":
			s.write("%s OK NOOP completed", cmd.tag)
		case "ID":
			s.write(`* ID ("name" "mailcapture")`)
			s.write("%s OK ID completed", cmd.tag)
		case "LOGOUT":
			s.write("* BYE logging out")
			s.write("%s OK LOGOUT completed", cmd.tag)
			return s.conn, false
		case "STARTTLS":
			if !s.starttls(cmd.tag) {
				return s.conn, false
			}
		case "LOGIN":
			if len(cmd.args) != 2 {
				s.write("%s BAD LOGIN needs a user name and a password", cmd.tag)
				continue
			}
			if done, handed := s.login(cmd.tag, cmd.args[0], cmd.args[1]); done {
				return s.conn, handed
			}
		case "AUTHENTICATE":
			user, pass, ok := s.authenticate(cmd)
			if !ok {
				continue
			}
			if done, handed := s.login(cmd.tag, user, pass); done {
				return s.conn, handed
			}
		default:
			s.write("%s BAD command unknown or not allowed before login", cmd.tag)
		}
	}
}

func (s *session) starttls(tag string) bool {
	if s.f.TLSConfig == nil || s.tls {
		s.write("%s BAD STARTTLS not available", tag)
		return true
	}
	if s.r.Buffered() > 0 {
		// RFC 9051 6.2.1: nothing may follow STARTTLS before the handshake.
		s.write("%s BAD commands pipelined after STARTTLS", tag)
		return false
	}
	s.write("%s OK begin TLS negotiation now", tag)
	tc := tls.Server(s.conn, s.f.TLSConfig)
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		s.log.Info("imap STARTTLS handshake failed", "err", err)
		return false
	}
	tc.SetDeadline(time.Time{})
	s.f.mu.Lock()
	delete(s.f.conns, s.conn)
	s.f.conns[tc] = struct{}{}
	s.f.mu.Unlock()
	s.conn, s.tls = tc, true
	s.r.Reset(tc)
	return true
}

// authenticate runs AUTHENTICATE PLAIN, with or without an initial
// response (SASL-IR).
func (s *session) authenticate(cmd *preauthCommand) (user, pass string, ok bool) {
	if len(cmd.args) < 1 || !strings.EqualFold(cmd.args[0], "PLAIN") {
		s.write("%s NO [CANNOT] only AUTHENTICATE PLAIN is offered", cmd.tag)
		return "", "", false
	}
	if !s.authAllowed() {
		s.write("%s NO [PRIVACYREQUIRED] use STARTTLS first", cmd.tag)
		return "", "", false
	}
	var resp string
	if len(cmd.args) >= 2 {
		resp = cmd.args[1]
		if resp == "=" {
			resp = ""
		}
	} else {
		s.write("+ ")
		line, err := readLimitedLine(s.r)
		if err != nil {
			return "", "", false
		}
		resp = line
	}
	if resp == "*" {
		s.write("%s BAD authentication cancelled", cmd.tag)
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(resp)
	parts := strings.Split(string(raw), "\x00")
	if err != nil || len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) {
		s.write("%s NO [AUTHENTICATIONFAILED] invalid credentials", cmd.tag)
		return "", "", false
	}
	return parts[1], parts[2], true
}

// login routes the credentials. done tells whether the front end is done
// with the connection (handed over, proxied, or dropped).
func (s *session) login(tag, user, pass string) (done, handedOver bool) {
	if !s.authAllowed() {
		s.write("%s NO [PRIVACYREQUIRED] use STARTTLS first", tag)
		return false, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := s.log.With("account", user)
	remote := s.conn.RemoteAddr()
	obs := s.f.Router.observer()
	if !s.f.Router.allow(remote, user) {
		log.Warn("imap login refused: too many failed logins")
		s.f.Router.loginDone("imap", "legacy", "limited", user, remote)
		s.write("%s NO [UNAVAILABLE] too many failed logins, try again later", tag)
		return false, false
	}
	route, err := s.f.Router.Route(ctx, user)
	if errors.Is(err, ErrMoving) {
		log.Info("imap login during a long cut-over: try again later")
		s.f.Router.loginDone("imap", "local", "moving", user, remote)
		s.write("%s NO [UNAVAILABLE] your mailbox is being moved, try again in a minute", tag)
		return false, false
	}
	if err != nil {
		log.Error("route login", "err", err)
		s.f.Router.loginDone("imap", route.String(), "error", user, remote)
		s.write("%s NO [UNAVAILABLE] temporary failure, try again later", tag)
		return false, false
	}
	if route == RouteLocal {
		acct, ok := s.checkLocal(ctx, user, pass)
		if !ok {
			s.f.Router.failed(remote, user)
			s.f.Router.loginDone("imap", "local", "failed", user, remote)
			s.write("%s NO [AUTHENTICATIONFAILED] authentication failed", tag)
			return false, false
		}
		s.f.Router.loggedIn("imap", RouteLocal, acct.Name, remote)
		s.f.Router.LocalLoginOK(acct.Name, pass)
		s.write("%s OK [CAPABILITY %s] logged in", tag, capsString())
		obs.SessionStarted("imap", "local")
		hc := &handedConn{Conn: s.conn, r: s.r, account: acct, reading: make(chan struct{}, 1),
			out: batchWriter{w: watchdog.Writer{Conn: s.conn, Timeout: orDuration(s.f.WriteTimeout, time.Minute)}}}
		hc.closed = func() {
			obs.SessionEnded("imap", "local")
			s.f.mu.Lock()
			delete(s.f.handed, hc)
			s.f.mu.Unlock()
		}
		s.f.mu.Lock()
		s.f.handed[hc] = struct{}{}
		s.f.mu.Unlock()
		s.f.handoff.hand(hc)
		return true, true
	}
	legacy, text, err := loginLegacy(ctx, s.f.Legacy, user, pass)
	if errors.Is(err, capture.ErrBadCredentials) {
		s.f.Router.failed(remote, user)
		s.f.Router.loginDone("imap", "legacy", "failed", user, remote)
		s.write("%s NO [AUTHENTICATIONFAILED] authentication failed", tag)
		return false, false
	}
	if err != nil {
		log.Error("legacy login", "err", err)
		s.f.Router.loginDone("imap", "legacy", "error", user, remote)
		s.write("%s NO [UNAVAILABLE] the mail server is not reachable, try again later", tag)
		return false, false
	}
	s.f.Router.loggedIn("imap", RouteLegacy, user, remote)
	s.f.Router.LegacyLoginOK(ctx, user, pass)
	if s.write("%s OK %s", tag, text) != nil {
		legacy.Close()
		return true, false
	}
	obs.SessionStarted("imap", "legacy")
	defer obs.SessionEnded("imap", "legacy")
	p := newProxiedIMAP(user, s.conn, s.r, legacy, orDuration(s.f.IdleTimeout, 30*time.Minute), orDuration(s.f.WriteTimeout, time.Minute))
	s.f.proxied.add(p)
	s.f.mu.Lock()
	delete(s.f.conns, s.conn) // ended by p.end at shutdown, at a command boundary
	s.f.mu.Unlock()
	defer s.f.proxied.remove(p)
	started := time.Now()
	end := p.run()
	attrs := []any{"by", end.by, "duration", time.Since(started).Round(time.Millisecond)}
	if end.err != nil {
		attrs = append(attrs, "err", end.err)
	}
	if end.by == "legacy" {
		log.Warn("proxied imap session ended by the legacy server", attrs...)
	} else {
		log.Info("proxied imap session ended", attrs...)
	}
	return true, false
}

// checkLocal checks the password of a captured account against its hash
// and, when that fails, once against the legacy server (a password
// changed there before the cut-over).
func (s *session) checkLocal(ctx context.Context, user, pass string) (*store.Account, bool) {
	acct, err := s.f.Local.Store.Account(ctx, user)
	if err != nil || acct.State != store.StateCaptured {
		return nil, false
	}
	if s.f.Router.matchesKnown(acct.Name, pass) {
		return &acct, true
	}
	ok, err := s.f.Local.Store.VerifyPassword(ctx, acct.Name, pass)
	if err == nil && !ok {
		ok = s.f.Router.passwordChanged(ctx, acct.Name, pass)
	}
	if err != nil || !ok {
		return nil, false
	}
	s.f.Router.rememberPassword(acct.Name, pass)
	return &acct, true
}

func capsString() string {
	var caps []string
	for c := range imapstore.Caps {
		caps = append(caps, string(c))
	}
	// IMAP4rev1 first, for clients that read only the first word.
	out := "IMAP4rev1"
	for _, c := range caps {
		if c != "IMAP4rev1" {
			out += " " + c
		}
	}
	return out
}

// legacyConn is a logged-in connection to the legacy server, with what it
// had already sent past the login response.
type legacyConn struct {
	net.Conn
	r *bufio.Reader
}

// loginLegacy logs in at the legacy server with the user's credentials
// and returns the connection and the text of its tagged OK (usually with
// the post-login capabilities).
func loginLegacy(ctx context.Context, ep capture.Endpoint, user, pass string) (*legacyConn, string, error) {
	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", ep.Address)
	if err != nil {
		return nil, "", err
	}
	fail := func(err error) (*legacyConn, string, error) {
		nc.Close()
		return nil, "", err
	}
	if ep.TLS == "implicit" {
		tc := tls.Client(nc, ep.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(err)
		}
		nc = tc
	}
	nc.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(nc)
	greeting, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "* OK") {
		return fail(fmt.Errorf("legacy greeting %q: %v", strings.TrimSpace(greeting), err))
	}
	caps := greeting
	if ep.TLS == "starttls" {
		if _, err := io.WriteString(nc, "m0 STARTTLS\r\n"); err != nil {
			return fail(err)
		}
		if line, err := readTagged(r, "m0"); err != nil || !strings.HasPrefix(line, "m0 OK") {
			return fail(fmt.Errorf("legacy STARTTLS: %q %v", line, err))
		}
		tc := tls.Client(nc, ep.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(err)
		}
		nc, r, caps = tc, bufio.NewReader(tc), ""
	}
	literalPlus := strings.Contains(strings.ToUpper(caps), "LITERAL+")
	u, uLit := imapQuote(user, literalPlus)
	p, pLit := imapQuote(pass, literalPlus)
	if (uLit || pLit) && !literalPlus {
		return fail(errors.New("legacy server without LITERAL+: credentials with 8-bit or line-break bytes are not sent"))
	}
	if _, err := fmt.Fprintf(nc, "m1 LOGIN %s %s\r\n", u, p); err != nil {
		return fail(err)
	}
	line, err := readTagged(r, "m1")
	if err != nil {
		return fail(err)
	}
	switch {
	case strings.HasPrefix(line, "m1 OK"):
		nc.SetDeadline(time.Time{})
		return &legacyConn{Conn: nc, r: r}, strings.TrimSpace(strings.TrimPrefix(line, "m1 OK")), nil
	case strings.HasPrefix(line, "m1 NO"):
		return fail(fmt.Errorf("%w: %s", capture.ErrBadCredentials, line))
	}
	return fail(fmt.Errorf("legacy LOGIN: %q", line))
}

// readTagged reads lines until the one tagged tag.
func readTagged(r *bufio.Reader, tag string) (string, error) {
	for i := 0; i < 100; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(line, tag+" ") {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
	return "", errors.New("legacy server sent too many lines before answering")
}

// handedConn is a connection passed to the local server, already
// authenticated: its first write (the server's greeting) is dropped, since
// the client got the tagged OK of its LOGIN instead, and bytes the front
// end had read ahead are read again first.
type handedConn struct {
	net.Conn
	r       *bufio.Reader
	account *store.Account
	// closed, if set, is called once when the connection is closed.
	closed    func()
	closeOnce sync.Once

	mu          sync.Mutex
	greetingCut bool
	pending     []byte // rest of a greeting split across writes
	// The server's output is gathered and written out when it reads next,
	// or a millisecond after its last write.
	out        batchWriter
	flushTimer *time.Timer
	flushArmed bool // the timer will flush
	// waiting: the server is in Read, between two commands; reading is
	// signalled each time it gets there.
	waiting bool
	reading chan struct{}
	byeSent bool
}

// byeWhenIdle sends bye once the server waits for the next command (or
// when ctx ends), then closes the connection.
func (c *handedConn) byeWhenIdle(ctx context.Context, bye string) {
	for {
		c.mu.Lock()
		if c.waiting || ctx.Err() != nil {
			c.out.Flush()
			c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c.Conn, bye)
			c.byeSent = true
			c.mu.Unlock()
			c.Close()
			return
		}
		c.mu.Unlock()
		select {
		case <-c.reading:
		case <-ctx.Done():
		}
	}
}

// Read writes out what the server gathered first: the server reads the
// next command only once it has answered the last.
func (c *handedConn) Read(p []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.waiting = true
	c.mu.Unlock()
	select {
	case c.reading <- struct{}{}:
	default:
	}
	n, err := c.r.Read(p)
	c.mu.Lock()
	c.waiting = false
	c.mu.Unlock()
	return n, err
}

// flush writes out the gathered output.
func (c *handedConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flushArmed {
		c.flushTimer.Stop()
		c.flushArmed = false
	}
	return c.out.Flush()
}

func (c *handedConn) Close() error {
	c.flush()
	err := c.Conn.Close()
	if c.closed != nil {
		c.closeOnce.Do(c.closed)
	}
	return err
}

// SetWriteDeadline is ignored: the server sets one around each response
// it encodes (four per FETCH line), while its output reaches the socket
// later, in batches, each written under a deadline of its own.
func (c *handedConn) SetWriteDeadline(time.Time) error { return nil }

func (c *handedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if !c.greetingCut {
		c.pending = append(c.pending, p...)
		i := bytes.IndexByte(c.pending, '\n')
		if i < 0 {
			c.mu.Unlock()
			return len(p), nil
		}
		rest := c.pending[i+1:]
		c.greetingCut, c.pending = true, nil
		c.mu.Unlock()
		if len(rest) > 0 {
			if _, err := c.out.w.Write(rest); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	defer c.mu.Unlock()
	n, err := c.out.Write(p)
	if c.out.buf != nil && !c.flushArmed {
		// Output written while the server is not reading (IDLE updates)
		// goes out within a millisecond of the first unflushed write.
		c.flushArmed = true
		if c.flushTimer == nil {
			c.flushTimer = time.AfterFunc(time.Millisecond, func() { c.flush() })
		} else {
			c.flushTimer.Reset(time.Millisecond)
		}
	}
	return n, err
}

// handoffListener feeds handed-over connections to the local server.
type handoffListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *handoffListener) hand(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.closed:
		c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
