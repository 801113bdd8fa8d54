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
	"sync/atomic"
	"time"

	"mailcapture/imapstore"
	"mailcapture/imapwire"
	"mailcapture/labels"
	"mailcapture/legacyclient"
)

// IMAPFront is the IMAP front end: it handles the not-authenticated state
// itself, decides each login with the Router's login policy, then serves
// captured accounts from the store (imapstore) and splices the others to
// the legacy server, logged in with the user's own credentials.
type IMAPFront struct {
	Router *Router
	// Local serves captured accounts' sessions.
	Local  *imapstore.Server
	Legacy legacyclient.Endpoint
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
	// ctx is the sessions' context, ended by Shutdown; loginCtx that of
	// connections not logged in yet, ended first (a login waiting for a
	// slow legacy server gives up).
	ctx, loginCtx       context.Context
	cancel, loginCancel context.CancelFunc
	connIDs             atomic.Uint64

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{} // not logged in yet
	closing   bool
	wg        sync.WaitGroup
	proxied   sessions[*proxiedIMAP]
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
		f.loginCtx, f.loginCancel = context.WithCancel(f.ctx)
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
	f.loginCancel()
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

// authMechanisms are the SASL mechanisms offered: both carry the password
// itself (what the login proxy must check at the legacy server);
// challenge-response ones (CRAM-MD5, SCRAM) cannot, and are not offered.
const authMechanisms = " AUTH=PLAIN AUTH=LOGIN"

func (s *session) caps() string {
	c := preauthCaps
	if s.f.TLSConfig != nil && !s.tls {
		c += " STARTTLS"
	}
	if s.authAllowed() {
		c += authMechanisms
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
		log: f.log().With("conn", fmt.Sprintf("imap-%d", f.connIDs.Add(1)), "proto", "imap", "remote", c.RemoteAddr().String())}
	defer func() {
		final = s.conn
		if r := recover(); r != nil {
			s.log.Error("an IMAP session panicked (a bug) and was ended", "panic", r, "stack", string(debug.Stack()))
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
			f.Router.observer().Refused(labels.Timeout)
			s.write("* BYE [UNAVAILABLE] autologout: no command within %s", orDuration(f.PreauthTimeout, time.Minute))
			return s.conn, false
		case errors.As(err, &long):
			f.Router.observer().Refused(labels.LineLength)
			if s.write("%s BAD line too long", orTag(long.Tag)) != nil {
				return s.conn, false
			}
			continue
		case errors.As(err, &limit):
			f.Router.observer().Refused(labels.LineLength)
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
			f.Router.observer().Refused(labels.UnknownCommand)
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

// authenticate runs AUTHENTICATE PLAIN or LOGIN, with or without an
// initial response (SASL-IR). A mechanism not offered gets NO.
func (s *session) authenticate(r *imapwire.Reader, cmd *preauthCommand) (user, pass string, ok bool) {
	mech := cmd.args[0]
	if mech != "PLAIN" && mech != "LOGIN" {
		s.write("%s NO [CANNOT] mechanism %s is not offered: use PLAIN or LOGIN", cmd.tag, mech)
		return "", "", false
	}
	if !s.authAllowed() {
		s.write("%s NO [PRIVACYREQUIRED] use STARTTLS first", cmd.tag)
		return "", "", false
	}
	// next returns the client's next SASL response: the initial one, or
	// one asked for with challenge.
	initial := len(cmd.args) >= 2
	next := func(challenge string) ([]byte, bool) {
		var resp string
		if initial {
			initial, resp = false, cmd.args[1]
			if resp == "=" {
				resp = ""
			}
		} else {
			s.write("+ %s", challenge)
			line, err := r.ReadLine()
			if err != nil {
				s.write("%s BAD response too long", cmd.tag)
				return nil, false
			}
			resp = line
		}
		if resp == "*" {
			s.write("%s BAD authentication cancelled", cmd.tag)
			return nil, false
		}
		raw, err := base64.StdEncoding.DecodeString(resp)
		if err != nil {
			s.write("%s BAD response is not base64", cmd.tag)
			return nil, false
		}
		return raw, true
	}
	if mech == "LOGIN" {
		name, ok := next(base64.StdEncoding.EncodeToString([]byte("Username:")))
		if !ok {
			return "", "", false
		}
		secret, ok := next(base64.StdEncoding.EncodeToString([]byte("Password:")))
		if !ok {
			return "", "", false
		}
		return string(name), string(secret), true
	}
	raw, ok := next("")
	if !ok {
		return "", "", false
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) {
		s.write("%s NO [AUTHENTICATIONFAILED] invalid credentials", cmd.tag)
		return "", "", false
	}
	return parts[1], parts[2], true
}

// login decides the credentials with the login policy. done tells whether
// the front end is done with the connection (served locally, proxied, or
// dropped); handedOver, whether its owner closed it.
func (s *session) login(tag, user, pass string) (done, handedOver bool) {
	if !s.authAllowed() {
		s.write("%s NO [PRIVACYREQUIRED] use STARTTLS first", tag)
		return false, false
	}
	ctx, cancel := context.WithTimeout(s.f.loginCtx, time.Minute)
	defer cancel()
	out, err := s.f.Router.Login(ctx, Attempt{Protocol: labels.IMAP, User: user, Password: pass, Remote: s.conn.RemoteAddr(), Log: s.log,
		Legacy: func(ctx context.Context, login string) (io.Closer, error) {
			sess, err := legacyclient.LoginIMAP(ctx, s.f.Legacy, legacyclient.User(login, pass))
			if err != nil {
				return nil, err
			}
			return sess, nil
		}})
	switch {
	case errors.Is(err, ErrRetired):
		s.write("%s NO [AUTHENTICATIONFAILED] no mailbox here: the old mail server was retired", tag)
		return false, false
	case errors.Is(err, ErrAuthFailed):
		s.write("%s NO [AUTHENTICATIONFAILED] authentication failed", tag)
		return false, false
	case errors.Is(err, ErrLimited):
		s.write("%s NO [UNAVAILABLE] too many failed logins, try again later", tag)
		return false, false
	case errors.Is(err, ErrMoving):
		s.write("%s NO [UNAVAILABLE] your mailbox is being moved, try again in a minute", tag)
		return false, false
	case err != nil:
		s.write("%s NO [UNAVAILABLE] temporary failure, try again later", tag)
		return false, false
	}
	log := s.log.With("account", out.Name)
	obs := s.f.Router.observer()
	if out.Route == labels.Local {
		s.write("%s OK [CAPABILITY %s] logged in", tag, imapstore.Capabilities())
		obs.SessionStarted(labels.IMAP, labels.Local)
		defer obs.SessionEnded(labels.IMAP, labels.Local)
		s.f.mu.Lock()
		delete(s.f.conns, s.conn) // the local server ends it at shutdown
		s.f.mu.Unlock()
		s.f.Local.Serve(s.f.ctx, s.conn, s.r, out.Account, log)
		return true, true
	}
	legacy := out.Session.(*legacyclient.IMAPSession)
	// Past the login the client's own pace rules: the legacy side may be
	// silent as long as the client is (an IDLE).
	legacy.Watch.Timeout = orDuration(s.f.IdleTimeout, 30*time.Minute) + time.Minute
	if s.write("%s OK %s", tag, legacy.OK) != nil {
		legacy.Close()
		return true, false
	}
	obs.SessionStarted(labels.IMAP, labels.Legacy)
	defer obs.SessionEnded(labels.IMAP, labels.Legacy)
	p := newProxiedIMAP(out.Name, s.conn, s.r, legacy, orDuration(s.f.IdleTimeout, 30*time.Minute), orDuration(s.f.WriteTimeout, time.Minute))
	s.f.proxied.add(p.account, p)
	s.f.mu.Lock()
	delete(s.f.conns, s.conn) // ended by p.end at shutdown, at a command boundary
	s.f.mu.Unlock()
	defer s.f.proxied.remove(p.account, p)
	started := time.Now()
	end := p.run()
	attrs := []any{"by", end.by, "duration", time.Since(started).Round(time.Millisecond)}
	if end.err != nil {
		attrs = append(attrs, "err", end.err)
	}
	log.Info("proxied imap session ended", attrs...)
	return true, false
}
