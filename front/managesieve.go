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
	"unicode/utf8"

	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/managesieve"
	"mailcapture/sieve"
	"mailcapture/store"
)

// SieveBackend is the ManageSieve front end's backend: logins go through
// the login policy; a captured account's scripts are the store's (each
// upload checked by the interpreter that runs them), the others' are
// the legacy ManageSieve server's, proxied command by command and ended
// between two commands at the account's cut-over.
type SieveBackend struct {
	Router *Router
	Store  *store.Store
	// Legacy is the legacy ManageSieve server; without one, accounts not
	// captured cannot edit their scripts until their cut-over.
	Legacy legacyclient.Endpoint
	// Delimiter is the recipient delimiter (for the subaddress extension).
	Delimiter string
	// MaxScripts bounds how many scripts an account keeps here. Default
	// 20.
	MaxScripts int
	// MaxScriptBytes bounds one script. Default (and at most)
	// sieve.MaxScriptBytes.
	MaxScriptBytes int

	proxied sessions[*proxiedSieve]
}

// Login implements managesieve.Backend.
func (b *SieveBackend) Login(ctx context.Context, user, password string, remote net.Addr, log *slog.Logger) (managesieve.Session, error) {
	// A ManageSieve login records the account but leaves its capture to
	// the mail logins: a script stored through a proxied session while a
	// capture it started converges would race the cut-over.
	a := Attempt{Protocol: labels.ManageSieve, User: user, Password: password, Remote: remote, Log: log, NoCapture: true}
	if b.Legacy.Address != "" {
		a.Legacy = func(ctx context.Context, login string) (io.Closer, error) {
			return legacyclient.LoginManageSieve(ctx, b.Legacy, legacyclient.User(login, password))
		}
	}
	out, err := b.Router.Login(ctx, a)
	switch {
	case errors.Is(err, ErrAuthFailed), errors.Is(err, ErrRetired):
		return nil, managesieve.ErrAuthFailed
	case err != nil:
		return nil, fmt.Errorf("%w: %v", managesieve.ErrTryLater, err)
	}
	obs := b.Router.Observed()
	obs.SessionStarted(labels.ManageSieve, out.Route)
	if out.Route == labels.Local {
		return &localSieve{b: b, acct: out.Account, end: func() { obs.SessionEnded(labels.ManageSieve, labels.Local) }}, nil
	}
	legacy, ok := out.Session.(*legacyclient.SieveSession)
	if !ok {
		obs.SessionEnded(labels.ManageSieve, out.Route)
		if out.Session != nil {
			out.Session.Close()
		}
		return nil, fmt.Errorf("%w: no legacy ManageSieve server to keep the scripts of an account not captured yet", managesieve.ErrTryLater)
	}
	p := &proxiedSieve{s: legacy, account: out.Name, ended: make(chan struct{})}
	p.close = func() {
		b.proxied.remove(p.account, p)
		obs.SessionEnded(labels.ManageSieve, out.Route)
	}
	b.proxied.add(p.account, p)
	return p, nil
}

// EndSessions ends the account's proxied ManageSieve sessions between
// two commands (cutover.Proxies): a script stored through them after the
// final sync would be lost.
func (b *SieveBackend) EndSessions(ctx context.Context, account string) {
	for _, p := range b.proxied.of(account) {
		p.endOnce.Do(func() { close(p.ended) })
	}
}

// localSieve is a captured account's scripts, in the store.
type localSieve struct {
	b    *SieveBackend
	acct store.Account
	end  func()
}

func noSuchScript(name string) error {
	return &managesieve.Error{Code: "NONEXISTENT", Text: fmt.Sprintf("there is no script %q", name)}
}

// validName applies RFC 5804 1.6: UTF-8 without control characters;
// and no "/", as Pigeonhole keeps scripts as files.
func validName(name string) error {
	if name == "" || len(name) > 512 || !utf8.ValidString(name) || strings.ContainsAny(name, "/") ||
		strings.ContainsFunc(name, func(r rune) bool {
			return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029
		}) {
		return &managesieve.Error{Text: fmt.Sprintf("%q is not a valid script name", name)}
	}
	return nil
}

func (l *localSieve) ListScripts(ctx context.Context) ([]managesieve.Script, error) {
	list, err := l.b.Store.SieveScripts(ctx, l.acct.ID)
	if err != nil {
		return nil, err
	}
	out := make([]managesieve.Script, len(list))
	for i, sc := range list {
		out[i] = managesieve.Script{Name: sc.Name, Active: sc.Active}
	}
	return out, nil
}

func (l *localSieve) find(ctx context.Context, name string) (*store.SieveScript, int, error) {
	list, err := l.b.Store.SieveScripts(ctx, l.acct.ID)
	if err != nil {
		return nil, 0, err
	}
	for i := range list {
		if list[i].Name == name {
			return &list[i], len(list), nil
		}
	}
	return nil, len(list), nil
}

func (l *localSieve) GetScript(ctx context.Context, name string) ([]byte, error) {
	sc, _, err := l.find(ctx, name)
	if err != nil {
		return nil, err
	}
	if sc == nil {
		return nil, noSuchScript(name)
	}
	return sc.Script, nil
}

func (l *localSieve) check(body []byte) error {
	if _, err := sieve.Compile(body, l.b.Delimiter); err != nil {
		return &managesieve.Error{Text: err.Error()}
	}
	return nil
}

func (l *localSieve) PutScript(ctx context.Context, name string, body []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := l.HaveSpace(ctx, name, len(body)); err != nil {
		return err
	}
	if err := l.check(body); err != nil {
		return err
	}
	return l.b.Store.PutSieveScript(ctx, l.acct.ID, name, body)
}

func (l *localSieve) CheckScript(ctx context.Context, body []byte) error { return l.check(body) }

func (l *localSieve) SetActive(ctx context.Context, name string) error {
	err := l.b.Store.SetActiveSieveScript(ctx, l.acct.ID, name)
	if errors.Is(err, store.ErrNotFound) {
		return noSuchScript(name)
	}
	return err
}

func (l *localSieve) DeleteScript(ctx context.Context, name string) error {
	err := l.b.Store.DeleteSieveScript(ctx, l.acct.ID, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return noSuchScript(name)
	case errors.Is(err, store.ErrSieveActive):
		return &managesieve.Error{Code: "ACTIVE", Text: "the active script cannot be deleted: deactivate it first"}
	}
	return err
}

func (l *localSieve) RenameScript(ctx context.Context, from, to string) error {
	if err := validName(to); err != nil {
		return err
	}
	err := l.b.Store.RenameSieveScript(ctx, l.acct.ID, from, to)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return noSuchScript(from)
	case errors.Is(err, store.ErrExists):
		return &managesieve.Error{Code: "ALREADYEXISTS", Text: fmt.Sprintf("there is a script %q already", to)}
	}
	return err
}

func (l *localSieve) HaveSpace(ctx context.Context, name string, size int) error {
	if err := validName(name); err != nil {
		return err
	}
	if max := min(orInt(l.b.MaxScriptBytes, sieve.MaxScriptBytes), sieve.MaxScriptBytes); size > max {
		return &managesieve.Error{Code: "QUOTA/MAXSIZE", Text: fmt.Sprintf("scripts may have %d bytes at most", max)}
	}
	sc, n, err := l.find(ctx, name)
	if err != nil {
		return err
	}
	if max := orInt(l.b.MaxScripts, 20); sc == nil && n >= max {
		return &managesieve.Error{Code: "QUOTA/MAXSCRIPTS", Text: fmt.Sprintf("%d scripts at most", max)}
	}
	return nil
}

func (l *localSieve) Ended() <-chan struct{} { return nil }

func (l *localSieve) Close() error {
	l.end()
	return nil
}

// proxiedSieve is an account not captured: each command goes to the
// legacy ManageSieve server, its refusals passed back as they are.
type proxiedSieve struct {
	s       *legacyclient.SieveSession
	account string
	ended   chan struct{}
	endOnce sync.Once
	close   func()
}

// legacyErr passes a legacy NO back with its code; anything else is
// temporary.
func legacyErr(err error) error {
	var r *legacyclient.SieveRefusal
	if errors.As(err, &r) {
		return &managesieve.Error{Code: r.Code, Text: r.Text}
	}
	return err
}

func (p *proxiedSieve) ListScripts(ctx context.Context) ([]managesieve.Script, error) {
	list, err := p.s.ListScripts(ctx)
	if err != nil {
		return nil, legacyErr(err)
	}
	out := make([]managesieve.Script, len(list))
	for i, sc := range list {
		out[i] = managesieve.Script{Name: sc.Name, Active: sc.Active}
	}
	return out, nil
}

func (p *proxiedSieve) GetScript(ctx context.Context, name string) ([]byte, error) {
	b, err := p.s.GetScript(ctx, name)
	return b, legacyErr(err)
}

func (p *proxiedSieve) PutScript(ctx context.Context, name string, body []byte) error {
	return legacyErr(p.s.PutScript(ctx, name, body))
}

func (p *proxiedSieve) CheckScript(ctx context.Context, body []byte) error {
	return legacyErr(p.s.CheckScript(ctx, body))
}

func (p *proxiedSieve) SetActive(ctx context.Context, name string) error {
	return legacyErr(p.s.SetActive(ctx, name))
}

func (p *proxiedSieve) DeleteScript(ctx context.Context, name string) error {
	return legacyErr(p.s.DeleteScript(ctx, name))
}

func (p *proxiedSieve) RenameScript(ctx context.Context, from, to string) error {
	return legacyErr(p.s.RenameScript(ctx, from, to))
}

func (p *proxiedSieve) HaveSpace(ctx context.Context, name string, size int) error {
	return legacyErr(p.s.HaveSpace(ctx, name, size))
}

func (p *proxiedSieve) Ended() <-chan struct{} { return p.ended }

func (p *proxiedSieve) Close() error {
	p.close()
	return p.s.Close()
}
