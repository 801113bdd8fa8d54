package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/store"
)

// The ways a login fails; each front end says them in its protocol's
// words.
var (
	// ErrAuthFailed: wrong user name or password (the same answer for
	// both: no way to tell which accounts exist). It counts toward the
	// failed-login limits.
	ErrAuthFailed = errors.New("authentication failed")
	// ErrLimited: too many failed logins from the client's address or for
	// the account; refused before anything was checked.
	ErrLimited = errors.New("too many failed logins, try again later")
	// ErrMoving: the account's cut-over outlasted the wait; try again soon
	// (no client may reach the legacy mailbox during the final sync).
	ErrMoving = errors.New("the mailbox is being moved")
	// ErrUnavailable: the login could not be checked now (the legacy
	// server is down or answered for now, the store failed). It does not
	// count as a failed login.
	ErrUnavailable = errors.New("temporarily unavailable")
	// ErrRetired: the account was never captured and the legacy server
	// is retired: there is no mailbox to log in to. It counts toward the
	// failed-login limits.
	ErrRetired = errors.New("no mailbox here: the old mail server was retired")
)

// Attempt is one login for the login policy to decide.
type Attempt struct {
	Protocol labels.Protocol
	User     string
	Password string
	Remote   net.Addr
	// Legacy logs in at the legacy server as login (the name the legacy
	// server is sent, legacy.login_name) with the attempt's password and
	// returns the session the front end will proxy (nil when the protocol
	// only needs the check). Errors are legacyclient's.
	Legacy func(ctx context.Context, login string) (io.Closer, error)
	// Log is the connection's logger; default the router's.
	Log *slog.Logger
	// NoCapture: a first login records the account but does not start
	// its capture (submission.starts_capture off).
	NoCapture bool

	account string // the canonical account name of User, once known
}

// Outcome is where a successful login goes.
type Outcome struct {
	Route labels.Route
	// Name is the canonical name of the account logged in to.
	Name string
	// Account is the account served locally (Local route).
	Account store.Account
	// Session is what Attempt.Legacy opened (Legacy route): the front end
	// proxies it and closes it.
	Session io.Closer
}

// Login decides a login, the same way for every protocol: the failed-login
// limits first; then by the account's state, read once: captured accounts
// are checked against their stored hash (a password changed at the legacy
// server before the cut-over is tried there once and taken over), the
// others at the legacy server, whose acceptance records the account and
// starts its capture. A login during a cut-over waits for it (at most
// CutoverWait). Every outcome is counted and logged once.
func (r *Router) Login(ctx context.Context, a Attempt) (Outcome, error) {
	log := a.Log
	if log == nil {
		log = r.log()
	}
	account, err := r.Naming.Account(a.User)
	if err != nil {
		// No account can have this name (no domain and no default one).
		log.Info("login refused: the name names no account", "user", a.User, "err", err)
		r.failed(log, a.Remote, a.User)
		r.done(log, a, labels.Legacy, labels.LoginFailed)
		return Outcome{}, ErrAuthFailed
	}
	a.account = account
	if !r.allow(a.Remote, account) {
		r.done(log, a, labels.Legacy, labels.LoginLimited)
		return Outcome{}, ErrLimited
	}
	acct, found, err := r.accountFor(ctx, account, a.User)
	switch {
	case errors.Is(err, ErrMoving):
		r.done(log, a, labels.Local, labels.LoginMoving)
		return Outcome{}, ErrMoving
	case err != nil:
		log.Error("a login could not be checked: the store could not be read", "account", account, "err", err)
		r.done(log, a, labels.Local, labels.LoginError)
		return Outcome{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if r.Mode != "shadow" && found && acct.State == store.StateCaptured {
		return r.localLogin(ctx, log, a, acct)
	}
	return r.legacyLogin(ctx, log, a, acct, found)
}

// accountFor reads the account of a login, waiting while it is in
// cut-over; found is false for an account mailcapture does not know. An
// account recorded under the name as typed (before names were canonical)
// is found too.
func (r *Router) accountFor(ctx context.Context, account, typed string) (acct store.Account, found bool, err error) {
	deadline := time.Now().Add(orDuration(r.CutoverWait, 10*time.Second))
	for {
		acct, err = r.Store.Account(ctx, account)
		if errors.Is(err, store.ErrNotFound) && !strings.EqualFold(account, typed) {
			acct, err = r.Store.Account(ctx, typed)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			return acct, false, nil
		case err != nil:
			return acct, false, err
		case acct.State != store.StateCutover || r.Mode == "shadow":
			return acct, true, nil
		}
		if time.Now().After(deadline) {
			return acct, true, fmt.Errorf("login %s: %w", account, ErrMoving)
		}
		select {
		case <-ctx.Done():
			return acct, true, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *Router) localLogin(ctx context.Context, log *slog.Logger, a Attempt, acct store.Account) (Outcome, error) {
	ok := r.matchesKnown(acct.Name, a.Password)
	if !ok {
		var err error
		ok, err = r.Store.VerifyPassword(ctx, acct.Name, a.Password)
		if err != nil {
			log.Error("a login could not be checked: the password hash could not be read", "account", acct.Name, "err", err)
			r.done(log, a, labels.Local, labels.LoginError)
			return Outcome{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if !ok {
			ok = r.passwordChanged(ctx, acct.Name, r.Naming.LegacyLogin(a.User, acct.Name), a.Password)
		}
	}
	if !ok {
		r.failed(log, a.Remote, acct.Name)
		r.done(log, a, labels.Local, labels.LoginFailed)
		return Outcome{}, ErrAuthFailed
	}
	r.rememberPassword(acct.Name, a.Password)
	r.done(log, a, labels.Local, labels.LoginOK)
	r.recordLogin(a.Protocol, acct.Name)
	r.LocalLoginOK(acct.Name, a.Password)
	return Outcome{Route: labels.Local, Name: acct.Name, Account: acct}, nil
}

func (r *Router) legacyLogin(ctx context.Context, log *slog.Logger, a Attempt, acct store.Account, found bool) (Outcome, error) {
	account := a.account
	if found {
		account = acct.Name
	}
	if r.retired.Load() {
		// The legacy server is gone: an account never captured cannot log
		// in anywhere.
		r.failed(log, a.Remote, account)
		r.done(log, a, labels.Legacy, labels.LoginFailed)
		return Outcome{}, ErrRetired
	}
	if a.Legacy == nil {
		r.done(log, a, labels.Legacy, labels.LoginUnavailable)
		return Outcome{}, fmt.Errorf("%w: no legacy server for %s", ErrUnavailable, a.Protocol)
	}
	login := r.Naming.LegacyLogin(a.User, account)
	sess, err := a.Legacy(ctx, login)
	switch {
	case errors.Is(err, legacyclient.ErrBadCredentials):
		r.failed(log, a.Remote, account)
		r.done(log, a, labels.Legacy, labels.LoginFailed)
		return Outcome{}, ErrAuthFailed
	case err != nil:
		if kind := legacyclient.Kind(err); kind != "" {
			r.observer().LegacyError(kind)
		}
		log.Warn("the legacy server could not check a login; the user was told to try again", "protocol", a.Protocol, "account", account, "err", err)
		r.done(log, a, labels.Legacy, labels.LoginUnavailable)
		return Outcome{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	r.done(log, a, labels.Legacy, labels.LoginOK)
	r.recordLogin(a.Protocol, account)
	known := &acct
	if !found {
		known = nil
	}
	r.legacyLoginOK(ctx, known, account, login, a.Password, !a.NoCapture)
	return Outcome{Route: labels.Legacy, Name: account, Session: sess}, nil
}

// done counts and logs a login's outcome: one line per login, never a
// password. A wrong password, and a refusal by the limits, are the user's
// business (INFO; the limit being reached is warned of once, see failed);
// a failure of the store is an ERROR.
func (r *Router) done(log *slog.Logger, a Attempt, route labels.Route, result labels.LoginResult) {
	r.observer().Login(a.Protocol, route, result)
	level := slog.LevelInfo
	switch result {
	case labels.LoginError:
		level = slog.LevelError
	}
	client := ""
	if a.Remote != nil {
		client = a.Remote.String()
	}
	msg := map[labels.LoginResult]string{
		labels.LoginOK: "login", labels.LoginFailed: "login",
		labels.LoginLimited:     "login refused: too many failed logins from this client or for this account",
		labels.LoginMoving:      "login refused for now: the mailbox is being moved",
		labels.LoginUnavailable: "login refused for now: the legacy server could not check it",
		labels.LoginError:       "login failed: mailcapture could not check it",
	}[result]
	attrs := []any{"protocol", a.Protocol, "route", route, "result", result, "account", a.account, "client", client}
	if a.account == "" {
		attrs[7] = a.User
	} else if a.account != a.User {
		attrs = append(attrs, "user", a.User)
	}
	log.Log(context.Background(), level, msg, attrs...)
}
