package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailcapture/front"
	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/mimeinfo"
	"mailcapture/slidingwindow"
)

// SubmissionObserver is told about submitted messages and refusals.
type SubmissionObserver interface {
	Submission(route labels.SubmissionRoute, result labels.SubmissionResult)
	Refused(limit labels.Limit)
}

// SubmissionBackend is the submission front end (listen.submission with
// STARTTLS, listen.submissions over TLS): users' mail clients send
// through it with SMTP AUTH, checked by the login policy every front end
// uses. Mail for the hosted domains is routed as inbound mail is (MX);
// mail for other domains goes through the legacy submission server on
// the user's own authenticated session (the user gets its answers), or,
// with an outbound relay (or once the legacy server is retired), is
// spooled for it. It implements smtp.Backend.
type SubmissionBackend struct {
	// MX is the SMTP front end whose routing, spool and legacy intake
	// hosted recipients share.
	MX *Backend
	// Router is the login policy.
	Router *front.Router
	// Legacy is the legacy submission server; with an empty address,
	// CheckPassword checks logins of accounts not captured, and mail for
	// other domains needs the outbound relay.
	Legacy legacyclient.Endpoint
	// CheckPassword checks a password at the legacy server when Legacy
	// has no address (capture.Engine.CheckPassword, over IMAP).
	CheckPassword func(ctx context.Context, login, password string) error
	// Outbound: mail for other domains is spooled for the outbound relay
	// rather than passed through the legacy submission server.
	Outbound bool
	// StartsCapture: a first login records the account and starts its
	// capture, as an IMAP login does.
	StartsCapture bool
	// MaxPerHour bounds the messages one account submits in an hour.
	// Default 300.
	MaxPerHour int
	// Trusted tells whether a client may authenticate without TLS.
	Trusted func(net.Addr) bool
	// Observer, if set, counts submissions and refusals.
	Observer SubmissionObserver
	Log      *slog.Logger

	connIDs atomic.Uint64
	rate    rateLimiter
}

func (b *SubmissionBackend) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

func (b *SubmissionBackend) observe(route labels.SubmissionRoute, result labels.SubmissionResult) {
	if b.Observer != nil {
		b.Observer.Submission(route, result)
	}
}

func (b *SubmissionBackend) refused(limit labels.Limit) {
	if b.Observer != nil {
		b.Observer.Refused(limit)
	}
}

// NewSession implements smtp.Backend.
func (b *SubmissionBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	remote := c.Conn().RemoteAddr()
	s := &submitSession{b: b, drainable: drainable{conn: c, ended: make(chan struct{})}, remote: remote,
		log: b.log().With("conn", fmt.Sprintf("submission-%d", b.connIDs.Add(1)), "proto", "submission", "remote", remote.String())}
	// The MX's Drain ends submission sessions too, between transactions.
	b.MX.register(&s.drainable)
	return s, nil
}

// submitSession is one client's session.
type submitSession struct {
	b *SubmissionBackend
	drainable
	remote net.Addr
	log    *slog.Logger

	// After AUTH.
	user, password string // as the user typed them
	account        string // canonical
	route          labels.Route
	legacy         *legacyclient.SubmissionSession

	// The transaction.
	from     string
	fromOK   bool // from is one of the account's addresses
	rcpts    []string
	targets  []target // hosted recipients and the outbound relay's
	external []string // passed through the legacy submission server
	passMail bool     // MAIL was sent on the legacy session
}

var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	errEncryption   = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "encryption required for authentication: use STARTTLS"}
	errLoginLimited = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many failed logins, try again later"}
	errLoginLater   = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "temporary authentication failure, try again later"}
	errRateLimited  = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "too many messages this hour, try again later"}
	errNoOutbound   = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "mail to other domains cannot be sent from here: no outbound relay is configured"}
)

func (s *submitSession) tls() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}

func (s *submitSession) mayAuth() bool {
	return s.tls() || s.b.Trusted != nil && s.b.Trusted(s.remote)
}

// AuthMechanisms implements smtp.AuthSession: PLAIN and LOGIN, after TLS
// (or from a trusted network). Challenge-response mechanisms are not
// offered: no password could be captured from them.
func (s *submitSession) AuthMechanisms() []string {
	if !s.mayAuth() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *submitSession) Auth(mech string) (sasl.Server, error) {
	if !s.mayAuth() {
		return nil, errEncryption
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return smtp.ErrAuthFailed // acting for another user is not a login to capture
			}
			return s.login(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{done: s.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks a user's password with the login policy (Router.Login):
// at the legacy submission server for an account not captured (that
// session is kept: mail for other domains goes out on it), against the
// stored hash for a captured one.
func (s *submitSession) login(user, pass string) error {
	ctx, cancel := context.WithTimeout(s.b.MX.context(), time.Minute)
	defer cancel()
	a := front.Attempt{Protocol: labels.Submission, User: user, Password: pass, Remote: s.remote, Log: s.log, NoCapture: !s.b.StartsCapture}
	switch {
	case s.b.Legacy.Address != "":
		a.Legacy = func(ctx context.Context, login string) (io.Closer, error) {
			return legacyclient.LoginSubmission(ctx, s.b.Legacy, legacyclient.User(login, pass), s.b.MX.Hostname)
		}
	case s.b.CheckPassword != nil:
		a.Legacy = func(ctx context.Context, login string) (io.Closer, error) {
			return nil, s.b.CheckPassword(ctx, login, pass)
		}
	}
	out, err := s.b.Router.Login(ctx, a)
	switch {
	case errors.Is(err, front.ErrAuthFailed), errors.Is(err, front.ErrRetired):
		return smtp.ErrAuthFailed
	case errors.Is(err, front.ErrLimited):
		return errLoginLimited
	case err != nil:
		return errLoginLater
	}
	s.user, s.password, s.account, s.route = user, pass, out.Name, out.Route
	s.log = s.log.With("account", out.Name)
	if sess, ok := out.Session.(*legacyclient.SubmissionSession); ok {
		s.legacy = sess
	}
	s.b.Router.Observed().SessionStarted(labels.Submission, out.Route)
	return nil
}

// loginServer is the server side of SASL LOGIN (draft-murchison-sasl-
// login): the user name and the password, each asked for unless the
// client sent the user name as its initial response.
type loginServer struct {
	step int
	user string
	done func(user, pass string) error
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		if response == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	}
	return nil, true, l.done(l.user, string(response))
}

// Mail starts a transaction: only once authenticated, within the
// account's hourly allowance.
func (s *submitSession) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if s.account == "" {
		return errAuthRequired
	}
	if s.b.MX.isDraining() {
		return errShuttingDown
	}
	if !s.b.rate.allow(s.account, orInt(s.b.MaxPerHour, 300)) {
		s.b.refused(labels.SubmissionRate)
		s.b.observe(labels.SubmitNone, labels.SubmitDeferred)
		s.log.Warn("an account went over its hourly submission allowance: its password may be stolen", "limit", orInt(s.b.MaxPerHour, 300))
		return errRateLimited
	}
	ctx, cancel := context.WithTimeout(s.b.MX.context(), time.Minute)
	defer cancel()
	s.from, s.fromOK = from, s.owns(ctx, from)
	s.setInTx(true)
	return nil
}

// owns tells whether addr is one of the account's addresses: its name,
// its extension forms, an alias that reaches it and nothing else (a
// catch-all grants nothing).
func (s *submitSession) owns(ctx context.Context, addr string) bool {
	if addr == "" {
		return false
	}
	dir := s.b.MX.directory()
	res, err := dir.Resolve(ctx, addr)
	if err != nil || res.Via == "catch-all" || len(res.Targets) != 1 || !res.Targets[0].Hosted {
		return false
	}
	name, err := dir.Naming.Account(dir.Naming.Base(res.Targets[0].Address))
	return err == nil && strings.EqualFold(name, s.account)
}

func (s *submitSession) senderRefused(addr string) error {
	s.b.refused(labels.SenderPolicy)
	s.log.Info("a submission from an address not the account's was refused", "sender", addr)
	return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: fmt.Sprintf("<%s>: sender address not yours: %s may send as its own addresses only", addr, s.account)}
}

// Rcpt routes a recipient: one of the hosted domains as inbound mail
// (MX), delivered or spooled here, so the sender must be the account;
// another domain through the legacy submission server on the user's
// session (its answer is the user's), or spooled for the outbound relay
// (the sender must be the account).
func (s *submitSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	ctx, cancel := context.WithTimeout(s.b.MX.context(), time.Minute)
	defer cancel()
	if _, ok := recipientDomain(to); !ok {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "not an address"}
	}
	if s.b.MX.directory().Hosted(to) {
		if !s.fromOK {
			return s.senderRefused(s.from)
		}
		accepted, err := s.b.MX.route(ctx, s.log, to)
		if err != nil {
			return err
		}
		s.rcpts, s.targets = append(s.rcpts, to), append(s.targets, accepted...)
		return nil
	}
	if s.b.Outbound || s.b.MX.retired() {
		if !s.b.Outbound {
			return errNoOutbound
		}
		if !s.fromOK {
			return s.senderRefused(s.from)
		}
		s.rcpts, s.targets = append(s.rcpts, to), append(s.targets, target{route: routeOutbound, address: to})
		return nil
	}
	if err := s.passRcpt(ctx, to, opts); err != nil {
		return err
	}
	s.rcpts, s.external = append(s.rcpts, to), append(s.external, to)
	return nil
}

// passRcpt sends the transaction's MAIL (once) and RCPT on the user's
// legacy session, logging in there first if need be. A session the
// legacy server dropped meanwhile (its idle timeout) is opened again.
func (s *submitSession) passRcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	for attempt := 0; ; attempt++ {
		if s.legacy == nil {
			if err := s.openLegacy(ctx); err != nil {
				return err
			}
		}
		err := error(nil)
		if !s.passMail {
			if err = s.legacy.Mail(s.from, nil); err == nil {
				s.passMail = true
			}
		}
		if err == nil {
			if err = s.legacy.Rcpt(to, opts); err == nil {
				return nil
			}
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se // the legacy server's answer is the user's
		}
		s.dropLegacy()
		if attempt == 1 || len(s.external) > 0 {
			s.log.Warn("the legacy submission server dropped a session; the user was told to try again", "err", err)
			return errLegacyOff
		}
	}
}

// openLegacy logs in at the legacy submission server as the user.
func (s *submitSession) openLegacy(ctx context.Context) error {
	if s.b.Legacy.Address == "" {
		return errNoOutbound
	}
	login := s.b.Router.Naming.LegacyLogin(s.user, s.account)
	sess, err := legacyclient.LoginSubmission(ctx, s.b.Legacy, legacyclient.User(login, s.password), s.b.MX.Hostname)
	if err != nil {
		if kind := legacyclient.Kind(err); kind != "" {
			s.b.Router.Observed().LegacyError(kind)
		}
		s.log.Warn("the legacy submission server could not be reached for mail to other domains; the user was told to try again", "err", err)
		return errLegacyOff
	}
	s.legacy = sess
	return nil
}

func (s *submitSession) dropLegacy() {
	if s.legacy != nil {
		s.legacy.Client.Close()
		s.legacy, s.passMail = nil, false
	}
}

// Data takes the message: the hop limit and, where mailcapture itself
// forwards it (hosted recipients, the outbound relay), a From: of the
// account's own; then it goes through the legacy submission server (the
// user gets its answer), is stored here, or both — the legacy server
// first, so that a refusal there leaves no copy here.
func (s *submitSession) Data(r io.Reader) error {
	defer s.setInTx(false)
	ctx, cancel := context.WithTimeout(s.b.MX.context(), 10*time.Minute)
	defer cancel()
	routes := s.routes()
	observe := func(result labels.SubmissionResult) {
		for _, r := range routes {
			s.b.observe(r, result)
		}
	}
	if len(s.rcpts) == 0 {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "no valid recipients"}
	}
	s.conn.Conn().SetReadDeadline(time.Now().Add(orDuration(s.b.MX.DataTimeout, 10*time.Minute)))
	br := bufio.NewReaderSize(r, 32<<10)
	header, hops, err := readHeader(br)
	if err != nil {
		observe(labels.SubmitDeferred)
		return errTemporary
	}
	if hops >= orInt(s.b.MX.MaxHops, 50) {
		observe(labels.SubmitRejected)
		s.b.MX.refused(labels.SMTPHops)
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: fmt.Sprintf("too many hops (%d Received headers): mail loop", hops)}
	}
	if len(s.targets) > 0 {
		if from, ok := s.headerFrom(ctx, header); !ok {
			observe(labels.SubmitRejected)
			return s.senderRefused(from)
		}
	}
	body := io.MultiReader(bytes.NewReader(s.b.MX.receivedFor(s.conn.Hostname(), s.remote, true)), bytes.NewReader(header), br)
	switch {
	case len(s.external) == 0:
		err = s.store(ctx, body)
	case len(s.targets) == 0:
		err = s.pass(body)
	default:
		err = s.passAndStore(ctx, body)
	}
	var se *smtp.SMTPError
	switch {
	case err == nil:
		observe(labels.SubmitAccepted)
		s.b.rate.add(s.account)
		s.log.Info("submission accepted", "from", s.from, "to", strings.Join(s.rcpts, ","))
		return nil
	case errors.As(err, &se) && se.Code >= 500:
		observe(labels.SubmitRejected)
	default:
		observe(labels.SubmitDeferred)
	}
	return err
}

// routes are the metric routes of the transaction.
func (s *submitSession) routes() []labels.SubmissionRoute {
	var out []labels.SubmissionRoute
	add := func(r labels.SubmissionRoute) {
		for _, x := range out {
			if x == r {
				return
			}
		}
		out = append(out, r)
	}
	for _, t := range s.targets {
		add(map[route]labels.SubmissionRoute{routeLocal: labels.SubmitLocal, routeHold: labels.SubmitHeld,
			routeLegacy: labels.SubmitLegacy, routeOutbound: labels.SubmitOutbound}[t.route])
	}
	if len(s.external) > 0 {
		add(labels.SubmitPassthrough)
	}
	return out
}

// headerFrom checks the From: field: each of its addresses the account's.
func (s *submitSession) headerFrom(ctx context.Context, header []byte) (string, bool) {
	msg, err := mail.ReadMessage(bytes.NewReader(append(bytes.Clone(header), '\r', '\n')))
	if err != nil {
		return "", true // an unreadable header: the envelope was checked
	}
	for _, a := range mimeinfo.ParseAddressList(msg.Header.Get("From")) {
		if a.Group {
			continue
		}
		addr := a.Mailbox + "@" + a.Host
		if !s.owns(ctx, addr) {
			return addr, false
		}
	}
	return "", true
}

// store delivers and spools the message here (Store.Deliver: one
// transaction for every target).
func (s *submitSession) store(ctx context.Context, body io.Reader) error {
	var p deliveryPlan
	for _, t := range s.targets {
		p.add(t)
	}
	_, _, err := s.b.MX.deliver(ctx, s.log, s.from, &p, body)
	if errors.Is(err, smtp.ErrDataTooLarge) {
		return smtp.ErrDataTooLarge
	}
	if err != nil {
		s.log.Error("a submitted message could not be stored; the user was told to try again", "err", err)
		return errTemporary
	}
	if len(p.legacy)+len(p.outbound) > 0 && s.b.MX.Spooled != nil {
		s.b.MX.Spooled()
	}
	return nil
}

// pass sends the message on the user's legacy session; its answer is
// the user's.
func (s *submitSession) pass(body io.Reader) error {
	w, err := s.legacy.Data()
	if err == nil {
		if _, err = io.Copy(w, body); err == nil {
			err = w.Close()
		} else {
			w.Close()
		}
	}
	s.passMail = false
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se
	case errors.Is(err, smtp.ErrDataTooLarge):
		return smtp.ErrDataTooLarge
	}
	s.dropLegacy()
	s.log.Warn("the legacy submission server dropped a session during DATA; the user was told to try again", "err", err)
	return errLegacyOff
}

// passAndStore sends the message to the legacy submission server (for
// the recipients of other domains) and, once it took it, stores it here
// (for the hosted ones). A failure here after the legacy server's 250 is
// a 451: the user's client sends again, and the other domains may get a
// second copy; nothing is lost.
func (s *submitSession) passAndStore(ctx context.Context, body io.Reader) error {
	tmp, err := os.CreateTemp("", "mailcapture-submission-")
	if err != nil {
		return errTemporary
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, body); err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return smtp.ErrDataTooLarge
		}
		return errTemporary
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return errTemporary
	}
	if err := s.pass(tmp); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return errTemporary
	}
	if err := s.store(ctx, tmp); err != nil {
		s.log.Error("a submitted message went to the other domains but could not be stored here; the user was told to try again (they may get it twice)", "err", err)
		return err
	}
	return nil
}

// Reset ends the transaction, here and on the legacy session.
func (s *submitSession) Reset() {
	if s.passMail && s.legacy != nil {
		if err := s.legacy.Reset(); err != nil {
			s.dropLegacy()
		}
	}
	s.from, s.fromOK, s.rcpts, s.targets, s.external, s.passMail = "", false, nil, nil, nil, false
	s.setInTx(false)
}

// Logout ends the session.
func (s *submitSession) Logout() error {
	if s.legacy != nil {
		s.legacy.Close()
		s.legacy = nil
	}
	if s.account != "" {
		s.b.Router.Observed().SessionEnded(labels.Submission, s.route)
	}
	s.b.MX.unregister(&s.drainable)
	return nil
}

// rateLimiter counts each account's submissions over the last hour.
type rateLimiter struct {
	sent slidingwindow.Counter
}

func (l *rateLimiter) allow(account string, max int) bool {
	return l.sent.Count(strings.ToLower(account), time.Now(), time.Hour) < max
}

func (l *rateLimiter) add(account string) {
	l.sent.Add(strings.ToLower(account), time.Now(), time.Hour)
}

var _ smtp.AuthSession = (*submitSession)(nil)
