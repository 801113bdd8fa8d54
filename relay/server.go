package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/addresses"
	"mailcapture/labels"
	"mailcapture/store"
)

// route is where one target's copy of a message goes.
type route int

const (
	routeLegacy   route = iota + 1 // spooled, relayed to the legacy server
	routeLocal                     // delivered into the store
	routeHold                      // held in the spool during a cut-over
	routeOutbound                  // submitted for another domain: spooled for the outbound relay
)

// Backend is the SMTP front end (the domain's new MX). It implements
// smtp.Backend.
type Backend struct {
	Store   *store.Store
	Domains []string
	// Directory resolves recipients (delimiter, aliases, accounts);
	// default: the store's accounts under Domains, no aliases.
	Directory *addresses.Directory
	// Retired, if set, tells whether the legacy server is gone: then
	// nothing is relayed or checked there, and a recipient that reaches
	// no captured account is refused (550 5.1.1).
	Retired func() bool
	// Filters, if set, runs captured accounts' Sieve scripts at local
	// delivery.
	Filters *Filters
	// Outbound says an outbound relay is configured (Queue.Outbound):
	// once the legacy server is retired, alias targets outside the
	// domains are spooled for it rather than dropped.
	Outbound bool
	Legacy   Legacy
	// Hostname goes into Received headers.
	Hostname string
	// MaxHops is the most Received headers a message may carry: more is
	// a mail loop, refused with 554 5.4.6. Default 50.
	MaxHops int
	// DataTimeout bounds one DATA transfer; a slower sender is cut off
	// (and retries). Default 10 minutes.
	DataTimeout time.Duration
	// Observer, if set, counts messages and refusals.
	Observer Observer
	// Spooled, if set, is called after a message is spooled for the
	// legacy server (Queue.Wake).
	Spooled func()
	Log     *slog.Logger

	cacheMu    sync.Mutex
	cache      map[string]cachedCheck
	defaultDir *addresses.Directory

	sessionsMu sync.Mutex
	sessions   map[*drainable]struct{}
	draining   bool
	connIDs    atomic.Uint64

	// ctx is the parent of every session's calls: it ends when Drain
	// returns, so a recipient check stuck at a slow legacy server ends
	// with the server.
	ctxOnce sync.Once
	ctx     context.Context
	cancel  context.CancelFunc
}

// context is the backend's context, the parent of each session's calls.
func (b *Backend) context() context.Context {
	b.ctxOnce.Do(func() { b.ctx, b.cancel = context.WithCancel(context.Background()) })
	return b.ctx
}

// cachedCheck is a recent answer of the legacy recipient check: positive
// answers are kept 5 minutes, refusals 1 minute, so a dictionary attack
// does not become a flood against the legacy server.
type cachedCheck struct {
	err     error
	expires time.Time
}

func (b *Backend) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// NewSession implements smtp.Backend.
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	remote := c.Conn().RemoteAddr()
	s := &session{b: b, drainable: drainable{conn: c, ended: make(chan struct{})}, helo: c.Hostname(), remote: remote,
		log: b.log().With("conn", fmt.Sprintf("smtp-%d", b.connIDs.Add(1)), "proto", "smtp", "remote", remote.String())}
	b.register(&s.drainable)
	return s, nil
}

// register makes Drain end a session (of the MX or of submission).
func (b *Backend) register(d *drainable) {
	b.sessionsMu.Lock()
	defer b.sessionsMu.Unlock()
	if b.sessions == nil {
		b.sessions = map[*drainable]struct{}{}
	}
	b.sessions[d] = struct{}{}
	if b.draining {
		go d.endWhenIdle(b.context())
	}
}

// unregister is called at a registered session's Logout.
func (b *Backend) unregister(d *drainable) {
	b.sessionsMu.Lock()
	delete(b.sessions, d)
	b.sessionsMu.Unlock()
	close(d.ended)
}

// Drain ends every session between two transactions (the sender gets
// 421 and retries later); transactions in progress finish first. It
// returns once all sessions ended or ctx ends; then what a session still
// waits for (a recipient check at the legacy server, a store write) is
// cancelled. Call it beside the server's Shutdown.
func (b *Backend) Drain(ctx context.Context) {
	b.context()
	defer b.cancel()
	b.sessionsMu.Lock()
	b.draining = true
	var all []*drainable
	for s := range b.sessions {
		all = append(all, s)
	}
	b.sessionsMu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.endWhenIdle(ctx)
		}()
	}
	wg.Wait()
}

func (b *Backend) isDraining() bool {
	b.sessionsMu.Lock()
	defer b.sessionsMu.Unlock()
	return b.draining
}

// drainable is what Drain needs of a session: its connection, whether a
// transaction is in progress, and its end.
type drainable struct {
	conn  *smtp.Conn
	ended chan struct{} // closed at Logout
	txMu  sync.Mutex
	inTx  bool // between MAIL FROM and the end of DATA (or RSET)
}

func (s *drainable) setInTx(v bool) {
	s.txMu.Lock()
	s.inTx = v
	s.txMu.Unlock()
}

// endWhenIdle makes the session's wait for its next command time out
// (go-smtp answers 421 and closes) once no transaction is in progress.
// go-smtp sets its own deadline before each command, so this repeats
// until the session has ended.
func (s *drainable) endWhenIdle(ctx context.Context) {
	for {
		s.txMu.Lock()
		if !s.inTx {
			s.conn.Conn().SetReadDeadline(time.Now())
		}
		s.txMu.Unlock()
		select {
		case <-s.ended:
			return
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// target is one copy of the transaction's message: an address with the
// route its account's state gives it.
type target struct {
	route route
	// address is what the legacy server is sent (legacy route) or what
	// the held entry records (hold route).
	address string
	// account is the target's account (local and hold routes).
	account store.Account
}

type session struct {
	b *Backend
	drainable
	helo   string
	remote net.Addr
	log    *slog.Logger // carries the connection id, protocol and peer
	from   string
	rcpts  []string // the envelope recipients accepted
	// targets are where the message goes, each once: one recipient may
	// reach several (an alias), several may reach one.
	targets []target
}

func (s *session) Reset() {
	s.from, s.rcpts, s.targets = "", nil, nil
	s.setInTx(false)
}

func (s *session) Logout() error {
	s.b.unregister(&s.drainable)
	return nil
}

// errShuttingDown refuses a new transaction during a graceful stop.
var errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down, try again later"}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.Reset()
	if s.b.isDraining() {
		return errShuttingDown
	}
	s.from = from
	s.setInTx(true)
	return nil
}

var (
	errNotHosted = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relay access denied: not a domain of this server"}
	errNoMailbox = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox here"}
	errLegacyOff = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "the mailbox server is not reachable, try again later"}
	errTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary local problem, try again later"}
	errAliasLoop = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "this address cannot be resolved now (the alias table loops), try again later"}
)

// directory is the recipients' resolver.
func (b *Backend) directory() *addresses.Directory {
	if b.Directory != nil {
		return b.Directory
	}
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	if b.defaultDir == nil {
		b.defaultDir = &addresses.Directory{Store: b.Store, Domains: b.Domains}
	}
	return b.defaultDir
}

func (b *Backend) retired() bool { return b.Retired != nil && b.Retired() }

// Rcpt resolves the recipient at once (route) and gives each account it
// reaches its own route. Recipients of different routes share a
// transaction.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ctx, cancel := context.WithTimeout(s.b.context(), time.Minute)
	defer cancel()
	if _, ok := recipientDomain(to); !ok || !s.b.directory().Hosted(to) {
		s.b.observe(labels.SMTPNone, labels.SMTPRejected)
		return errNotHosted
	}
	accepted, err := s.b.route(ctx, s.log, to)
	if err != nil {
		return err
	}
	s.rcpts = append(s.rcpts, to)
	s.targets = append(s.targets, accepted...)
	return nil
}

// route resolves a recipient of a hosted domain (addresses.Directory:
// delimiter, aliases, catch-all) and gives each account it reaches its own
// route: a captured account local delivery, one in cut-over held mail,
// the others the legacy server, checked there live (its refusal is passed
// back now: no backscatter later), relayed under the target's own address
// so that the legacy server does not deliver a second copy to a captured
// mailbox. After the legacy server's retirement only captured accounts
// take mail; a recipient that reaches none is refused (550 5.1.1). The
// error is the SMTP answer.
func (b *Backend) route(ctx context.Context, log *slog.Logger, to string) ([]target, error) {
	res, err := b.directory().Resolve(ctx, to)
	switch {
	case errors.Is(err, addresses.ErrLoop) || errors.Is(err, addresses.ErrTooMany):
		log.Warn("the alias table cannot resolve a recipient: fix addresses.file", "rcpt", to, "err", err)
		return nil, errAliasLoop
	case err != nil:
		log.Error("the store could not be read to route a recipient; the sender was told to try again", "rcpt", to, "err", err)
		return nil, errTemporary
	}
	retired := b.retired()
	var accepted []target
	var refusal error
	for _, t := range res.Targets {
		switch t.Route(retired, b.Outbound) {
		case addresses.RouteLocal:
			accepted = append(accepted, target{route: routeLocal, address: t.Address, account: t.Account})
		case addresses.RouteHold:
			accepted = append(accepted, target{route: routeHold, address: t.Address, account: t.Account})
		case addresses.RouteOutbound:
			accepted = append(accepted, target{route: routeOutbound, address: t.Address})
		case addresses.RouteNone:
			if res.Via == "alias" || res.Via == "catch-all" {
				log.Warn("an alias target has no mailbox here since the legacy server's retirement: fix addresses.file", "rcpt", to, "target", t.Address)
			}
		default:
			if err := b.checkLegacy(ctx, log, t.Address); err != nil {
				var se *smtp.SMTPError
				if !errors.As(err, &se) || se.Code < 500 {
					return nil, err
				}
				refusal = err
				if len(res.Targets) > 1 {
					log.Warn("the legacy server refuses an alias target: fix addresses.file", "rcpt", to, "target", t.Address, "answer", se.Message)
				}
				continue
			}
			accepted = append(accepted, target{route: routeLegacy, address: t.Address})
		}
	}
	if len(accepted) == 0 {
		route := labels.SMTPNone
		if refusal == nil {
			refusal = errNoMailbox
		} else {
			route = labels.SMTPLegacy
		}
		b.observe(route, labels.SMTPRejected)
		return nil, refusal
	}
	return accepted, nil
}

// recipientDomain returns the domain of a recipient address: what follows
// its last "@" (a quoted local part may hold one). Addresses without a
// local part or a domain, or with control characters, have none.
func recipientDomain(to string) (string, bool) {
	i := strings.LastIndexByte(to, '@')
	if i <= 0 || i == len(to)-1 {
		return "", false
	}
	for _, c := range to {
		if c < ' ' || c == 0x7f {
			return "", false
		}
	}
	return to[i+1:], true
}

func (b *Backend) hosted(domain string) bool {
	for _, d := range b.Domains {
		if strings.EqualFold(d, domain) {
			return true
		}
	}
	return false
}

func (b *Backend) checkLegacy(ctx context.Context, log *slog.Logger, rcpt string) error {
	key := strings.ToLower(rcpt)
	b.cacheMu.Lock()
	if c, ok := b.cache[key]; ok && time.Now().Before(c.expires) {
		b.cacheMu.Unlock()
		return c.err
	}
	b.cacheMu.Unlock()
	err := b.Legacy.CheckRecipient(ctx, rcpt)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		b.remember(key, nil, 5*time.Minute)
		return nil
	case errors.As(err, &se):
		b.remember(key, se, time.Minute)
		return se
	}
	log.Warn("the legacy server could not be asked whether it takes mail for a recipient; the sender was told to try again", "rcpt", rcpt, "err", err)
	return errLegacyOff
}

func (b *Backend) remember(key string, err error, ttl time.Duration) {
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	if b.cache == nil || len(b.cache) > 100000 {
		b.cache = map[string]cachedCheck{}
	}
	b.cache[key] = cachedCheck{err: err, expires: time.Now().Add(ttl)}
}

// Data stores the message durably (the store, or the spool) before the
// 250 goes out. Any failure of ours is a 4xx: the sender keeps the
// message. A message that has looped (too many Received headers) is
// refused with 554.
func (s *session) Data(r io.Reader) error {
	defer s.setInTx(false)
	ctx, cancel := context.WithTimeout(s.b.context(), 10*time.Minute)
	defer cancel()
	if len(s.rcpts) == 0 {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "no valid recipients"}
	}
	routes := s.routes()
	observe := func(result labels.SMTPResult) {
		for _, r := range routes {
			s.b.observe(r, result)
		}
	}
	// The whole transfer has DataTimeout (the command's read deadline,
	// set by go-smtp at the DATA line, would bound it otherwise).
	s.conn.Conn().SetReadDeadline(time.Now().Add(orDuration(s.b.DataTimeout, 10*time.Minute)))
	br := bufio.NewReaderSize(r, 32<<10)
	header, hops, err := readHeader(br)
	if err == nil && hops >= orInt(s.b.MaxHops, 50) {
		observe(labels.SMTPRejected)
		s.b.refused(labels.SMTPHops)
		s.log.Warn("a message that has looped (too many Received headers) was refused", "from", s.from, "hops", hops)
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: fmt.Sprintf("too many hops (%d Received headers): mail loop", hops)}
	}
	body := io.MultiReader(bytes.NewReader(s.received()), bytes.NewReader(header), br)
	var queueID int64
	if err == nil {
		var dests []store.Destination
		var done []store.Delivered
		if dests, done, err = s.b.deliver(ctx, s.log, s.from, s.plan(), body); err == nil {
			for i, d := range dests {
				if err == nil && d.Route == store.RouteLegacy {
					queueID = done[i].SpoolID
					if s.b.Spooled != nil {
						s.b.Spooled()
					}
				}
			}
		}
	}
	if errors.Is(err, smtp.ErrDataTooLarge) {
		observe(labels.SMTPRejected)
		s.b.refused(labels.SMTPSize)
		return smtp.ErrDataTooLarge
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		observe(labels.SMTPDeferred)
		s.log.Warn("a sender took too long to send a message; the connection was closed and it will retry")
		// The rest of the DATA is never read: answer and close here, so
		// that it is not taken for commands.
		nc := s.conn.Conn()
		nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		s.b.refused(labels.SMTPDataTimeout)
		io.WriteString(nc, "421 4.4.2 data timeout, closing the connection: try again later\r\n")
		nc.Close()
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "data timeout, try again later"}
	}
	if err != nil {
		observe(labels.SMTPDeferred)
		s.log.Error("a message could not be stored; the sender was told to try again", "err", err)
		return errTemporary
	}
	observe(labels.SMTPAccepted)
	routeNames := make([]string, len(routes))
	for i, r := range routes {
		routeNames[i] = string(r)
	}
	s.log.Info("smtp: message accepted", "route", strings.Join(routeNames, ","), "queue_id", queueID, "from", s.from, "to", strings.Join(s.rcpts, ","))
	return nil
}

func (b *Backend) observe(route labels.SMTPRoute, result labels.SMTPResult) {
	if b.Observer != nil {
		b.Observer.SMTPMessage(route, result)
	}
}

func (b *Backend) refused(limit labels.Limit) {
	if b.Observer != nil {
		b.Observer.Refused(limit)
	}
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// maxHeaderScan bounds how much of a header is read to count hops.
const maxHeaderScan = 1 << 20

// readHeader reads the message's header section (up to maxHeaderScan
// bytes) and counts its Received fields; the body stays in r.
func readHeader(r *bufio.Reader) (header []byte, hops int, err error) {
	var buf bytes.Buffer
	atLineStart := true
	for buf.Len() < maxHeaderScan {
		line, err := r.ReadSlice('\n')
		buf.Write(line)
		if atLineStart && len(line) >= 9 && strings.EqualFold(string(line[:9]), "received:") {
			hops++
		}
		ended := atLineStart && (len(line) == 0 || line[0] == '\n' || (line[0] == '\r' && len(line) >= 2 && line[1] == '\n'))
		atLineStart = err != bufio.ErrBufferFull
		switch {
		case err == io.EOF:
			return buf.Bytes(), hops, nil
		case err != nil && err != bufio.ErrBufferFull:
			return nil, 0, err
		case ended:
			return buf.Bytes(), hops, nil // the empty line that ends the header
		}
	}
	return buf.Bytes(), hops, nil
}

// received is the Received header this hop adds (RFC 5321 4.4). Its id
// is random and unique to this message: the relay queue looks for it in
// the legacy mailbox to learn whether an interrupted delivery went through.
func (s *session) received() []byte { return s.b.receivedFor(s.helo, s.remote, false) }

// receivedFor is the Received header for a message from helo at remote;
// authenticated says it was submitted (ESMTPSA, RFC 3848).
func (b *Backend) receivedFor(helo string, remote net.Addr, authenticated bool) []byte {
	host := b.Hostname
	if host == "" {
		host = "mailcapture"
	}
	with := "ESMTP"
	if authenticated {
		with = "ESMTPSA"
	}
	return []byte(fmt.Sprintf("Received: from %s (%s)\r\n\tby %s (mailcapture) with %s id %s;\r\n\t%s\r\n",
		helo, remote, host, with, strings.ToLower(rand.Text()), time.Now().Format(time.RFC1123Z)))
}

// destinations are where the message goes, all stored in one
// transaction (store.Deliver): each local account's INBOX once, one
// spool entry per account held for its cut-over, one spool entry for the
// legacy server with every address relayed there.
func (s *session) plan() *deliveryPlan {
	var p deliveryPlan
	for _, t := range s.targets {
		p.add(t)
	}
	return &p
}

// deliveryPlan gathers the targets of one message into its destinations.
type deliveryPlan struct {
	inboxes  []int64 // accounts, each once
	accounts map[int64]store.Account
	rcpt     map[int64]string   // the address that reached each local account
	held     map[int64][]string // account → addresses
	heldIDs  []int64
	legacy   []string // addresses, each once
	outbound []string // addresses, each once
}

func (p *deliveryPlan) add(t target) {
	switch t.route {
	case routeLocal:
		if !slices.Contains(p.inboxes, t.account.ID) {
			p.inboxes = append(p.inboxes, t.account.ID)
			if p.accounts == nil {
				p.accounts, p.rcpt = map[int64]store.Account{}, map[int64]string{}
			}
			p.accounts[t.account.ID], p.rcpt[t.account.ID] = t.account, t.address
		}
	case routeHold:
		if p.held == nil {
			p.held = map[int64][]string{}
		}
		if _, ok := p.held[t.account.ID]; !ok {
			p.heldIDs = append(p.heldIDs, t.account.ID)
		}
		if !slices.ContainsFunc(p.held[t.account.ID], func(a string) bool { return strings.EqualFold(a, t.address) }) {
			p.held[t.account.ID] = append(p.held[t.account.ID], t.address)
		}
	case routeLegacy:
		if !slices.ContainsFunc(p.legacy, func(a string) bool { return strings.EqualFold(a, t.address) }) {
			p.legacy = append(p.legacy, t.address)
		}
	case routeOutbound:
		if !slices.Contains(p.outbound, t.address) {
			p.outbound = append(p.outbound, t.address)
		}
	}
}

func (p *deliveryPlan) empty() bool {
	return len(p.inboxes)+len(p.heldIDs)+len(p.legacy)+len(p.outbound) == 0
}

func (p *deliveryPlan) destinations(ctx context.Context, st *store.Store) ([]store.Destination, error) {
	var dests []store.Destination
	for _, id := range p.inboxes {
		inbox, err := st.MailboxByName(ctx, id, "INBOX")
		if err != nil {
			return nil, err
		}
		dests = append(dests, store.Destination{MailboxID: inbox.ID})
	}
	for _, id := range p.heldIDs {
		dests = append(dests, store.Destination{Route: store.RouteHold, AccountID: id, To: p.held[id]})
	}
	if len(p.legacy) > 0 {
		dests = append(dests, store.Destination{Route: store.RouteLegacy, To: p.legacy})
	}
	if len(p.outbound) > 0 {
		dests = append(dests, store.Destination{Route: store.RouteOutbound, To: p.outbound})
	}
	return dests, nil
}

// routes are the metric routes of the transaction's targets.
func (s *session) routes() []labels.SMTPRoute {
	var out []labels.SMTPRoute
	for _, t := range s.targets {
		r := map[route]labels.SMTPRoute{routeLocal: labels.SMTPLocal, routeHold: labels.SMTPHeld, routeLegacy: labels.SMTPLegacy}[t.route]
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// CountRefusals wraps the SMTP listener so that the refusals go-smtp makes
// by itself are counted like ours (mailcapture_limit_refusals_total): a
// session silent past smtp.command_timeout (smtp_command_timeout) and a
// command line over the length limit (smtp_line_length).
func (b *Backend) CountRefusals(ln net.Listener) net.Listener {
	return &refusalListener{Listener: ln, b: b}
}

type refusalListener struct {
	net.Listener
	b *Backend
}

func (ln *refusalListener) Accept() (net.Conn, error) {
	c, err := ln.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &refusalConn{Conn: c, b: ln.b}, nil
}

// refusalConn recognises go-smtp's own refusals in what it writes, and
// ends a session whose first command is an HTTP one (a cross-protocol
// request, Postfix's smtpd_forbidden_commands); go-smtp itself closes a
// session after a few unknown commands, which is counted here.
type refusalConn struct {
	net.Conn
	b       *Backend
	started bool
}

var (
	idleTimeoutReply = []byte("421 4.4.2 Idle timeout")
	longLineReply    = []byte("500 5.4.0 Too long line")
	tooManyErrors    = []byte("Too many errors")
	forbiddenFirst   = [][]byte{[]byte("GET "), []byte("POST "), []byte("HEAD "), []byte("PUT "), []byte("CONNECT "), []byte("OPTIONS ")}
)

func (c *refusalConn) Write(p []byte) (int, error) {
	switch {
	case bytes.Contains(p, idleTimeoutReply):
		c.b.refused(labels.SMTPCommandTimeout)
	case bytes.Contains(p, longLineReply):
		c.b.refused(labels.SMTPLineLength)
	case bytes.Contains(p, tooManyErrors):
		c.b.refused(labels.UnknownCommand)
	}
	return c.Conn.Write(p)
}

func (c *refusalConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.started && n > 0 {
		c.started = true
		for _, verb := range forbiddenFirst {
			if bytes.HasPrefix(bytes.ToUpper(p[:n]), verb) {
				c.b.refused(labels.UnknownCommand)
				c.Conn.Write([]byte("221 2.7.0 Error: not an SMTP client, goodbye\r\n"))
				c.Conn.Close()
				return 0, io.EOF
			}
		}
	}
	return n, err
}
