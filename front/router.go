// Package front is the login proxy: the IMAP and POP3 front ends check an
// account's state at each login and either serve it from the store
// (captured) or log in at the legacy server with the user's credentials,
// serve the session from there, and start or resume its capture.
package front

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailcapture/addresses"
	"mailcapture/capture"
	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/store"
)

// Router is the login policy every front end uses (Login), and what a
// login means for the account: its recording, its capture, follow syncs.
type Router struct {
	Store *store.Store
	// Scheduler, if set, captures accounts whose user logged in
	// (interactive priority). Nil with Mode "shadow".
	Scheduler *capture.Scheduler
	// Mode is "capture" (default) or "shadow" (record nothing, capture
	// nothing: every login goes to the legacy server).
	Mode string
	// Naming makes account names of login names and says what the legacy
	// server is sent.
	Naming addresses.Naming
	// CutoverWait bounds how long a login waits for an account in cut-over
	// (a few seconds). Default 10s.
	CutoverWait time.Duration
	// Limiter, if set, refuses logins after too many failures, before
	// anything is checked.
	Limiter *LoginLimiter
	// Follow, if set, runs after a local login of a captured account, in
	// the background, one at a time per account: a follow sync of mail
	// that still reached the legacy server. Nil once the legacy server is
	// retired.
	Follow func(ctx context.Context, account, password string)
	// LegacyCheck, if set, asks the legacy server whether it accepts the
	// password (nil error: yes; legacyclient.ErrBadCredentials: no). A captured
	// account's password that fails against the local hash is tried there
	// once: a user who changed it at the legacy server before the cut-over
	// keeps the new one. Nil once the legacy server is retired.
	LegacyCheck func(ctx context.Context, user, password string) error
	// Remember, if set, receives each account's password when it is first
	// seen to be right in this process, or changed (the credential vault
	// seals it). It runs in the background.
	Remember func(account, password string)
	// Observer, if set, is told about logins and sessions.
	Observer Observer
	Log      *slog.Logger

	followMu      sync.Mutex
	following     map[string]bool
	followCtx     context.Context
	stopFollowing context.CancelFunc
	followStopped bool
	followWG      sync.WaitGroup
	// retired: the legacy server is gone (SetRetired); no follow sync and
	// no password check there any more.
	retired atomic.Bool

	// Successful logins are written to the store in the background, in
	// batches, off the login's path.
	loginMu       sync.Mutex
	loginsWritten *sync.Cond
	pendingLogins []store.Login
	writingLogins bool

	// known holds, per account, a keyed MAC of the password last seen to
	// match its stored hash, so that repeated legacy logins skip the slow
	// hash. The key is random per process and never leaves memory.
	known  sync.Map // lower-case account -> [32]byte
	macKey [32]byte
	keyed  sync.Once

	// recording holds, per lower-case account, a channel closed when the
	// legacy login being recorded for it (a slow hash) is done: the
	// logins that arrive meanwhile wait for it and then find their
	// password known, instead of each computing the hash again.
	recordMu  sync.Mutex
	recording map[string]chan struct{}
}

// recordOnce records a legacy login of account (recordLegacyLogin) unless
// another login of that account is recording already, in which case it
// waits for that one to end and reports ran false: the caller then looks
// again. recorded reports whether the account could be recorded.
func (r *Router) recordOnce(ctx context.Context, acct *store.Account, account, password string) (ran, recorded bool) {
	key := strings.ToLower(account)
	r.recordMu.Lock()
	if ch, busy := r.recording[key]; busy {
		r.recordMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return false, false
	}
	if r.recording == nil {
		r.recording = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	r.recording[key] = ch
	r.recordMu.Unlock()
	defer func() {
		r.recordMu.Lock()
		delete(r.recording, key)
		r.recordMu.Unlock()
		close(ch)
	}()
	return true, r.recordLegacyLogin(ctx, acct, account, password)
}

// allow reports whether a login may be tried now.
func (r *Router) allow(addr net.Addr, account string) bool {
	if r.Limiter == nil || r.Limiter.Allow(addr, account) {
		return true
	}
	r.observer().Refused(labels.FailedLogins)
	return false
}

// recordLogin records a successful login: who, over which protocol (the
// shadow-mode forecast, kept in every mode). The write happens in the
// background; FlushLogins waits for it.
func (r *Router) recordLogin(protocol labels.Protocol, account string) {
	r.loginMu.Lock()
	defer r.loginMu.Unlock()
	r.pendingLogins = append(r.pendingLogins, store.Login{Account: account, Protocol: string(protocol), At: time.Now()})
	if !r.writingLogins {
		r.writingLogins = true
		go r.writeLogins()
	}
}

// writeLogins writes pending logins until none is left.
func (r *Router) writeLogins() {
	for {
		r.loginMu.Lock()
		batch := r.pendingLogins
		r.pendingLogins = nil
		if len(batch) == 0 {
			r.writingLogins = false
			if r.loginsWritten != nil {
				r.loginsWritten.Broadcast()
			}
			r.loginMu.Unlock()
			return
		}
		r.loginMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := r.Store.RecordLogins(ctx, batch); err != nil {
			r.log().Warn("the latest logins could not be recorded", "err", err)
		}
		cancel()
	}
}

// FlushLogins returns once every login so far is written to the store.
func (r *Router) FlushLogins() {
	r.loginMu.Lock()
	defer r.loginMu.Unlock()
	if r.loginsWritten == nil {
		r.loginsWritten = sync.NewCond(&r.loginMu)
	}
	for r.writingLogins {
		r.loginsWritten.Wait()
	}
}

// passwordMAC is the keyed MAC of an account's password (see known).
func (r *Router) passwordMAC(account, password string) [32]byte {
	r.keyed.Do(func() { rand.Read(r.macKey[:]) })
	m := hmac.New(sha256.New, r.macKey[:])
	m.Write([]byte(strings.ToLower(account)))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// matchesKnown tells whether password is the one last seen to match the
// account's stored hash.
func (r *Router) matchesKnown(account, password string) bool {
	v, ok := r.known.Load(strings.ToLower(account))
	if !ok {
		return false
	}
	want := v.([32]byte)
	got := r.passwordMAC(account, password)
	return hmac.Equal(got[:], want[:])
}

func (r *Router) rememberPassword(account, password string) {
	mac := r.passwordMAC(account, password)
	old, had := r.known.Swap(strings.ToLower(account), mac)
	if r.Remember != nil && (!had || old.([32]byte) != mac) {
		go r.Remember(account, password)
	}
}

// passwordChanged tries a password that failed against a captured
// account's local hash once at the legacy server; when the legacy server
// accepts it, the local hash is replaced and true returned.
func (r *Router) passwordChanged(ctx context.Context, account, login, password string) bool {
	if r.LegacyCheck == nil || password == "" || r.retired.Load() {
		return false
	}
	if err := r.LegacyCheck(ctx, login, password); err != nil {
		if !errors.Is(err, legacyclient.ErrBadCredentials) {
			r.log().Warn("the legacy server could not check a changed password", "account", account, "err", err)
		}
		return false
	}
	if err := r.Store.SetPassword(ctx, account, password); err != nil {
		r.log().Error("the new password hash could not be saved", "account", account, "err", err)
		return false
	}
	r.rememberPassword(account, password)
	r.log().Info("password changed at the legacy server: local hash replaced", "account", account)
	return true
}

// failed records a failed login; the one that reaches a limit is a
// problem for the admin (a guessing attack, or a client with an old
// password): one warning, not one per refused login.
func (r *Router) failed(log *slog.Logger, addr net.Addr, account string) {
	if r.Limiter == nil {
		return
	}
	if reached := r.Limiter.Failed(addr, account); reached != "" {
		log.Warn(fmt.Sprintf("too many failed logins %s: further logins are refused for up to %s", reached, r.Limiter.window()))
	}
}

// SetRetired records that the legacy server is gone: follow syncs and
// password checks there stop.
func (r *Router) SetRetired() {
	if !r.retired.Swap(true) {
		r.log().Info("legacy server retired: no more follow syncs or password checks there")
	}
}

// Retired tells whether the legacy server is retired (SetRetired).
func (r *Router) Retired() bool { return r.retired.Load() }

// LocalLoginOK starts a follow sync for the account unless one runs.
func (r *Router) LocalLoginOK(account, password string) {
	if r.Follow == nil || r.retired.Load() {
		return
	}
	key := strings.ToLower(account)
	r.followMu.Lock()
	if r.following == nil {
		r.following = map[string]bool{}
	}
	if r.following[key] || r.followStopped {
		r.followMu.Unlock()
		return
	}
	r.following[key] = true
	if r.followCtx == nil {
		r.followCtx, r.stopFollowing = context.WithCancel(context.Background())
	}
	parent := r.followCtx
	r.followWG.Add(1)
	r.followMu.Unlock()
	go func() {
		defer r.followWG.Done()
		defer func() {
			r.followMu.Lock()
			delete(r.following, key)
			r.followMu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(parent, time.Hour)
		defer cancel()
		r.Follow(ctx, account, password)
	}()
}

// StopFollows cancels the follow syncs in progress, waits for them to end
// (each commits what it has copied) and starts no more.
func (r *Router) StopFollows() {
	r.followMu.Lock()
	r.followStopped = true
	if r.stopFollowing != nil {
		r.stopFollowing()
	}
	r.followMu.Unlock()
	r.followWG.Wait()
}

func (r *Router) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// legacyLoginOK records a login the legacy server accepted: an unknown
// account (acct nil) is created in state capturing with the password's
// hash, a known one gets the newer password's hash, and the capture is
// (re)submitted with interactive priority.
func (r *Router) legacyLoginOK(ctx context.Context, acct *store.Account, user, login, password string, capture bool) {
	if r.Mode == "shadow" {
		r.log().Info("shadow login", "account", user)
		return
	}
	// One login of an account at a time computes a hash; a storm of
	// first logins waits for it, then finds the password known.
	for attempt := 0; !r.matchesKnown(user, password); attempt++ {
		ran, recorded := r.recordOnce(ctx, acct, user, password)
		if ran && !recorded {
			return
		}
		if ran || ctx.Err() != nil || attempt == 3 {
			break
		}
		acct = nil // another login recorded it meanwhile: read it again
	}
	// The name the legacy server accepted is what captures log in with.
	if acct == nil || acct.LegacyLogin != login {
		if err := r.Store.SetLegacyLogin(ctx, user, login); err != nil && !errors.Is(err, store.ErrNotFound) {
			r.log().Error("the legacy login name of an account could not be saved", "account", user, "err", err)
		}
	}
	if r.Scheduler != nil && capture {
		r.Scheduler.Submit(user, password, true)
	}
}

// recordLegacyLogin records an account the legacy server just let in:
// created (capturing, with the password's hash) when new, its hash
// replaced when the password changed. It reports false when the account
// could not be recorded.
func (r *Router) recordLegacyLogin(ctx context.Context, known *store.Account, user, password string) bool {
	var acct store.Account
	var err error
	if known != nil {
		acct = *known
	} else {
		acct, err = r.Store.Account(ctx, user)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		if _, err := r.Store.CreateAccount(ctx, user, password, store.StateCapturing); err != nil && !errors.Is(err, store.ErrExists) {
			r.log().Error("a new account could not be recorded", "account", user, "err", err)
			return false
		}
		r.rememberPassword(user, password)
		r.log().Info("account captured at login", "account", user)
	case err != nil:
		r.log().Error("an account could not be read", "account", user, "err", err)
		return false
	default:
		if ok, _ := r.Store.VerifyPassword(ctx, acct.Name, password); !ok {
			if err := r.Store.SetPassword(ctx, acct.Name, password); err != nil {
				r.log().Error("the new password hash could not be saved", "account", user, "err", err)
				return true
			}
		}
		r.rememberPassword(acct.Name, password)
	}
	return true
}
