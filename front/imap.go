package front

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
	"strings"
	"sync"
	"time"

	"mailcapture/capture"
	"mailcapture/imapstore"
	"mailcapture/imapwire"
	"mailcapture/store"
)

// IMAPFront is the IMAP front end: it handles the not-authenticated state
// itself, then serves captured accounts from the store (go-imap's
// imapserver over imapstore) and splices the others to the legacy server,
// logged in with the user's own credentials.
type IMAPFront struct {
	Router *Router
	// Local serves captured accounts' sessions.
	Local  *imapstore.Server
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

	once sync.Once
	// ctx is the sessions' context, ended by Shutdown.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{} // not logged in yet
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
		f.ctx, f.cancel = context.WithCancel(context.Background())
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

// Shutdown stops accepting, and ends every session with * BYE between
// two commands: proxied ones at their next command boundary, local ones
// by the local server, those not logged in yet at once (bounded by ctx).
func (f *IMAPFront) Shutdown(ctx context.Context) error {
	f.init()
	f.mu.Lock()
	f.closing = true
	for _, ln := range f.listeners {
		ln.Close()
	}
	f.mu.Unlock()
	var ending sync.WaitGroup
	for _, p := range f.proxied.all() {
		ending.Add(1)
		go func() {
			defer ending.Done()
			p.end(ctx, "server shutting down, please reconnect")
		}()
	}
	ending.Add(1)
	go func() {
		defer ending.Done()
		f.Local.Shutdown(ctx)
	}()
	f.mu.Lock()
	for c := range f.conns { // not logged in yet
		io.WriteString(c, "* BYE [UNAVAILABLE] server shutting down\r\n")
		c.Close()
	}
	f.mu.Unlock()
	ending.Wait()
	f.cancel()
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
	r := newPreauthReader(s.r, func() error { return s.write("+ Ready for literal data") })
	for {
		// The whole command must arrive within the timeout, however
		// slowly its bytes trickle in.
		s.conn.SetReadDeadline(time.Now().Add(orDuration(f.PreauthTimeout, time.Minute)))
		cmd, err := readPreauth(r)
		var ne net.Error
		var long *imapwire.ErrLineTooLong
		var limit *imapwire.LimitError
		var syntax *imapwire.SyntaxError
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			f.Router.observer().Refused("timeout")
			s.write("* BYE [UNAVAILABLE] autologout: no command within %s", orDuration(f.PreauthTimeout, time.Minute))
			return s.conn, false
		case errors.As(err, &long):
			f.Router.observer().Refused("line_length")
			if s.write("%s BAD line too long", orTag(long.Tag)) != nil {
				return s.conn, false
			}
			continue
		case errors.As(err, &limit):
			f.Router.observer().Refused("line_length")
			r.Discard()
			if s.write("%s BAD %s", orTag(r.CurrentTag()), limit.Msg) != nil {
				return s.conn, false
			}
			continue
		case errors.As(err, &syntax):
			r.Discard()
			if s.write("%s BAD %s", orTag(r.CurrentTag()), syntax.Msg) != nil {
				return s.conn, false
			}
			continue
		case errors.Is(err, errUnknownCommand):
			// Not a command of this state, or not IMAP at all (a cross-
			// protocol request): the session ends at the first one.
			f.Router.observer().Refused("unknown_command")
			s.write("* BYE unknown command before login")
			return s.conn, false
		case err != nil:
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
			r = newPreauthReader(s.r, func() error { return s.write("+ Ready for literal data") })
		case "LOGIN":
			if done, handed := s.login(cmd.tag, cmd.args[0], cmd.args[1]); done {
				return s.conn, handed
			}
		case "AUTHENTICATE":
			user, pass, ok := s.authenticate(r, cmd)
			if !ok {
				continue
			}
			if done, handed := s.login(cmd.tag, user, pass); done {
				return s.conn, handed
			}
		}
	}
}

func orTag(tag string) string {
	if tag == "" {
		return "*"
	}
	return tag
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
func (s *session) authenticate(r *imapwire.Reader, cmd *preauthCommand) (user, pass string, ok bool) {
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
		line, err := r.ReadLine()
		if err != nil {
			s.write("%s BAD %s", cmd.tag, "response too long")
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
		s.write("%s OK [CAPABILITY %s] logged in", tag, imapstore.Capabilities())
		obs.SessionStarted("imap", "local")
		defer obs.SessionEnded("imap", "local")
		s.f.mu.Lock()
		delete(s.f.conns, s.conn) // the local server ends it at shutdown
		s.f.mu.Unlock()
		s.f.Local.Serve(s.f.ctx, s.conn, s.r, *acct, log)
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
	acct, err := s.f.Router.Store.Account(ctx, user)
	if err != nil || acct.State != store.StateCaptured {
		return nil, false
	}
	if s.f.Router.matchesKnown(acct.Name, pass) {
		return &acct, true
	}
	ok, err := s.f.Router.Store.VerifyPassword(ctx, acct.Name, pass)
	if err == nil && !ok {
		ok = s.f.Router.passwordChanged(ctx, acct.Name, pass)
	}
	if err != nil || !ok {
		return nil, false
	}
	s.f.Router.rememberPassword(acct.Name, pass)
	return &acct, true
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
