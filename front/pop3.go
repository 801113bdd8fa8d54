package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/pop3"
	"mailcapture/pop3store"
)

// POP3Backend routes POP3 logins: captured accounts are served from the
// store, the others from the legacy server, proxied message by message
// with the user's own credentials.
type POP3Backend struct {
	Router *Router
	// Log is the POP3 front end's logger; default the router's.
	Log   *slog.Logger
	Local *pop3store.Backend
	// Legacy is the legacy POP3 server.
	Legacy legacyclient.Endpoint

	mu      sync.Mutex
	proxied map[string]map[*legacyMaildrop]struct{}
	changed chan struct{} // signalled when a proxied session ends
}

// EndSessions lets the account's proxied POP3 sessions finish until ctx
// ends, then cuts the rest: a cut session never sent its DELEs to the
// legacy server, so they are rolled back.
func (b *POP3Backend) EndSessions(ctx context.Context, account string) {
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

// Login implements pop3.Backend: the login policy decides; a captured
// account's maildrop is opened from the store, another's at the legacy
// server, read message by message.
func (b *POP3Backend) Login(ctx context.Context, user, password string, remote net.Addr) (pop3.Maildrop, error) {
	out, err := b.Router.Login(ctx, Attempt{Protocol: labels.POP3, User: user, Password: password, Remote: remote, Log: b.Log,
		Legacy: func(ctx context.Context, login string) (io.Closer, error) {
			c, err := legacyclient.LoginPOP3(ctx, b.Legacy, legacyclient.User(login, password))
			if err != nil {
				return nil, err
			}
			drop, err := newLegacyMaildrop(c)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("%w: %w", legacyclient.ErrUnavailable, legacyclient.ClassifyPOP3(err))
			}
			return legacyDrop{drop}, nil
		}})
	switch {
	case errors.Is(err, ErrAuthFailed), errors.Is(err, ErrRetired):
		return nil, pop3.ErrAuthFailed
	case errors.Is(err, pop3.ErrInUse):
		return nil, pop3.ErrInUse
	case err != nil:
		return nil, pop3.ErrTemporary
	}
	obs := b.Router.observer()
	if out.Route == labels.Local {
		drop, err := b.Local.Open(ctx, out.Account)
		if err != nil {
			return nil, err
		}
		obs.SessionStarted(labels.POP3, labels.Local)
		return &observedMaildrop{Maildrop: drop, ended: func() { obs.SessionEnded(labels.POP3, labels.Local) }}, nil
	}
	drop := out.Session.(legacyDrop).legacyMaildrop
	b.track(out.Name, drop)
	obs.SessionStarted(labels.POP3, labels.Legacy)
	return &observedMaildrop{Maildrop: drop, ended: func() { obs.SessionEnded(labels.POP3, labels.Legacy) }}, nil
}

// legacyDrop is a legacy maildrop as the login policy holds it.
type legacyDrop struct{ *legacyMaildrop }

func (d legacyDrop) Close() error {
	d.legacyMaildrop.Close()
	return nil
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
