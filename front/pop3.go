package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"mailcapture/capture"
	"mailcapture/pop3"
	"mailcapture/pop3store"
)

// POP3Backend routes POP3 logins: captured accounts are served from the
// store, the others from the legacy server, proxied message by message
// with the user's own credentials.
type POP3Backend struct {
	Router *Router
	Local  *pop3store.Backend
	// Legacy is the legacy POP3 server.
	Legacy capture.Endpoint

	mu      sync.Mutex
	proxied map[string]map[*legacyMaildrop]struct{}
	changed chan struct{} // signalled when a proxied session ends
}

// FinishSessions lets the account's proxied POP3 sessions finish until ctx
// ends, then cuts the rest: a cut session never sent its DELEs to the
// legacy server, so they are rolled back.
func (b *POP3Backend) FinishSessions(ctx context.Context, account string) {
	for {
		b.mu.Lock()
		open := b.proxied[strings.ToLower(account)]
		n := len(open)
		changed := b.changed
		b.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			b.mu.Lock()
			for d := range b.proxied[strings.ToLower(account)] {
				d.c.Close()
			}
			b.mu.Unlock()
			return
		}
	}
}

func (b *POP3Backend) track(account string, d *legacyMaildrop) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proxied == nil {
		b.proxied = map[string]map[*legacyMaildrop]struct{}{}
		b.changed = make(chan struct{})
	}
	key := strings.ToLower(account)
	if b.proxied[key] == nil {
		b.proxied[key] = map[*legacyMaildrop]struct{}{}
	}
	b.proxied[key][d] = struct{}{}
	d.untrack = func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.proxied[key], d)
		close(b.changed)
		b.changed = make(chan struct{})
	}
}

// Login implements pop3.Backend.
func (b *POP3Backend) Login(ctx context.Context, user, password string, remote net.Addr) (pop3.Maildrop, error) {
	obs := b.Router.observer()
	if !b.Router.allow(remote, user) {
		b.Router.loginDone("pop3", "legacy", "limited", user, remote)
		return nil, errTooManyFailures
	}
	route, err := b.Router.Route(ctx, user)
	if errors.Is(err, ErrMoving) {
		b.Router.loginDone("pop3", "local", "moving", user, remote)
		return nil, pop3.ErrTemporary
	}
	if err != nil {
		b.Router.loginDone("pop3", route.String(), "error", user, remote)
		return nil, err
	}
	if route == RouteLocal {
		drop, err := b.Local.Login(ctx, user, password, remote)
		if errors.Is(err, pop3.ErrAuthFailed) && b.Router.passwordChanged(ctx, user, password) {
			drop, err = b.Local.Login(ctx, user, password, remote)
		}
		switch {
		case err == nil:
			b.Router.loggedIn("pop3", RouteLocal, user, remote)
			b.Router.LocalLoginOK(user, password)
			obs.SessionStarted("pop3", "local")
			return &observedMaildrop{Maildrop: drop, ended: func() { obs.SessionEnded("pop3", "local") }}, nil
		case errors.Is(err, pop3.ErrAuthFailed):
			b.Router.failed(remote, user)
			b.Router.loginDone("pop3", "local", "failed", user, remote)
		case errors.Is(err, pop3.ErrInUse):
		default:
			b.Router.loginDone("pop3", "local", "error", user, remote)
		}
		return nil, err
	}
	// The connection lives as long as the client's session, beyond this
	// call's context; every exchange on it keeps its own timeout.
	c, err := pop3.Dial(context.WithoutCancel(ctx), b.Legacy.Address, pop3.DialOptions{TLS: b.Legacy.TLS, TLSConfig: b.Legacy.TLSConfig, Timeout: b.Legacy.Timeout})
	if err != nil {
		b.Router.loginDone("pop3", "legacy", "error", user, remote)
		return nil, fmt.Errorf("legacy pop3: %w", err)
	}
	if err := c.Login(user, password); err != nil {
		c.Close()
		var perr *pop3.Error
		switch {
		case errors.As(err, &perr) && perr.Code == "IN-USE":
			return nil, pop3.ErrInUse
		case errors.As(err, &perr) && perr.Code != "SYS/TEMP" && perr.Code != "LOGIN-DELAY":
			b.Router.failed(remote, user)
			b.Router.loginDone("pop3", "legacy", "failed", user, remote)
			return nil, pop3.ErrAuthFailed
		}
		b.Router.loginDone("pop3", "legacy", "error", user, remote)
		return nil, fmt.Errorf("legacy pop3 login: %w", err)
	}
	drop, err := newLegacyMaildrop(c)
	if err != nil {
		c.Close()
		b.Router.loginDone("pop3", "legacy", "error", user, remote)
		return nil, err
	}
	b.track(user, drop)
	b.Router.loggedIn("pop3", RouteLegacy, user, remote)
	b.Router.LegacyLoginOK(ctx, user, password)
	obs.SessionStarted("pop3", "legacy")
	return &observedMaildrop{Maildrop: drop, ended: func() { obs.SessionEnded("pop3", "legacy") }}, nil
}

// observedMaildrop reports the end of its session.
type observedMaildrop struct {
	pop3.Maildrop
	ended func()
}

func (m *observedMaildrop) Close() {
	m.Maildrop.Close()
	m.ended()
}

// errTooManyFailures: the limiter refused the attempt (answered as a
// temporary failure).
var errTooManyFailures = errors.New("too many failed logins, try again later")

// legacyMaildrop is a maildrop on the legacy server. Deletions are sent
// only at the client's QUIT, so a session that is cut (at cut-over, or by
// the network) deletes nothing at the legacy server.
type legacyMaildrop struct {
	c       *pop3.Client
	nums    []int
	infos   []pop3.MessageInfo
	closed  bool
	untrack func()
}

func newLegacyMaildrop(c *pop3.Client) (*legacyMaildrop, error) {
	list, err := c.List()
	if err != nil {
		return nil, err
	}
	uidls, err := c.UIDL()
	if err != nil {
		return nil, err
	}
	if len(list) != len(uidls) {
		return nil, fmt.Errorf("legacy pop3: LIST has %d messages, UIDL %d", len(list), len(uidls))
	}
	d := &legacyMaildrop{c: c}
	for i := range list {
		d.nums = append(d.nums, list[i].Num)
		d.infos = append(d.infos, pop3.MessageInfo{Size: list[i].Size, UIDL: uidls[i].UIDL})
	}
	return d, nil
}

func (d *legacyMaildrop) Messages() []pop3.MessageInfo { return d.infos }

func (d *legacyMaildrop) Open(_ context.Context, i int) (io.ReadCloser, error) {
	r, err := d.c.Retr(d.nums[i])
	if err != nil {
		return nil, err
	}
	return drainCloser{r}, nil
}

// drainCloser reads the rest of a message on Close, so the next command
// finds the connection at a command boundary.
type drainCloser struct{ io.Reader }

func (d drainCloser) Close() error {
	_, err := io.Copy(io.Discard, d.Reader)
	return err
}

func (d *legacyMaildrop) Commit(_ context.Context, deleted []int) error {
	for _, i := range deleted {
		if err := d.c.Dele(d.nums[i]); err != nil {
			return err
		}
	}
	d.closed = true
	return d.c.Quit()
}

func (d *legacyMaildrop) Close() {
	if !d.closed {
		d.closed = true
		d.c.Quit() // nothing is marked for deletion unless Commit ran
	}
	if d.untrack != nil {
		d.untrack()
		d.untrack = nil
	}
}
