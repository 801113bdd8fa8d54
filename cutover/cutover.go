// Package cutover is the one home of an account's cut-over: from the
// legacy server to the store, with no client touching the legacy mailbox
// during the final sync; what a stop interrupted, put right at the next
// start; and the cut-overs an admin asks for.
package cutover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"mailcapture/capture"
	"mailcapture/store"
)

// Proxies ends an account's sessions proxied to the legacy server: IMAP
// ones at their next command boundary, POP3 ones once they finish; those
// still open when ctx ends are cut (a cut POP3 session deletes nothing).
type Proxies interface {
	EndSessions(ctx context.Context, account string)
}

// Syncer runs syncs with the legacy server (capture.Engine).
type Syncer interface {
	Converge(ctx context.Context, account, password string, maxPasses int) (capture.Convergence, error)
}

// Cutover moves a converged account from the legacy server to the store
// (docs/CONTRACT.md, "cutover"): logins wait, proxied IMAP sessions end at a
// command boundary, proxied POP3 sessions may finish (then are cut, which
// rolls back their deletions), relayed mail on its way to the legacy
// server arrives (later mail is held in the spool), a final sync runs with no client touching
// the legacy mailbox, and the account becomes captured. If anything fails
// the account goes back to capturing, served by the legacy server as
// before, and the error is returned.
type Cutover struct {
	Store *store.Store
	// Sync runs the final sync.
	Sync Syncer
	// IMAP and POP3 end the proxied sessions (either may be nil).
	IMAP Proxies
	POP3 Proxies
	// Sieve ends the proxied ManageSieve sessions (may be nil): a script
	// stored through one after the final sync would be lost.
	Sieve Proxies
	// Place, if set, decides where released held mail goes (the account's
	// Sieve script); nil: INBOX.
	Place store.Placer
	// IMAPWait bounds the wait for a command boundary. Default 10s.
	IMAPWait time.Duration
	// POP3Grace is how long proxied POP3 sessions may go on. Default 30s.
	POP3Grace time.Duration
	// Quiesce, if set, returns once no relayed mail for the account is
	// on its way to the legacy server (the relay holds it from the
	// start of the cut-over on). The final sync waits for it.
	Quiesce func(ctx context.Context, account string) error
	// QuiesceWait bounds that wait. Default 2m.
	QuiesceWait time.Duration
	Log         *slog.Logger
}

func (c *Cutover) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// Run cuts the account over. It is a no-op for an account that is not
// capturing (another cut-over won, or it is captured already). With an
// empty password (a forced cut-over of an account nobody logged into
// since the start) there is no final sync.
func (c *Cutover) Run(ctx context.Context, account, password string) error {
	err := c.Store.Transition(ctx, account, store.StateCapturing, store.StateCutover)
	if errors.Is(err, store.ErrStateChanged) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cut-over %s: %w", account, err)
	}
	log := c.log().With("account", account)
	log.Info("cut-over started")
	start := time.Now()
	if err := c.run(ctx, account, password); err != nil {
		log.Error("cut-over failed; the account stays on the legacy server", "err", err)
		if terr := c.Store.Transition(context.WithoutCancel(ctx), account, store.StateCutover, store.StateCapturing); terr != nil {
			log.Error("a failed cut-over could not set the account back to capturing", "err", terr)
		}
		return fmt.Errorf("cut-over %s: %w", account, err)
	}
	log.Info("cut-over done; the account is served from the store", "took", time.Since(start))
	return nil
}

func (c *Cutover) run(ctx context.Context, account, password string) error {
	start := time.Now()
	var stages []any // how long each step took, for the log
	stage := func(name string) {
		stages = append(stages, name, time.Since(start).Round(time.Millisecond))
		start = time.Now()
	}
	defer func() { c.log().Info("cut-over steps", append([]any{"account", account}, stages...)...) }()
	if c.IMAP != nil {
		wctx, cancel := context.WithTimeout(ctx, orDuration(c.IMAPWait, 10*time.Second))
		c.IMAP.EndSessions(wctx, account)
		cancel()
	}
	if c.Sieve != nil {
		c.Sieve.EndSessions(ctx, account)
	}
	if c.POP3 != nil {
		wctx, cancel := context.WithTimeout(ctx, orDuration(c.POP3Grace, 30*time.Second))
		c.POP3.EndSessions(wctx, account)
		cancel()
	}
	stage("sessions_ended")
	if c.Quiesce != nil {
		qctx, cancel := context.WithTimeout(ctx, orDuration(c.QuiesceWait, 2*time.Minute))
		err := c.Quiesce(qctx, account)
		cancel()
		if err != nil {
			return err
		}
		stage("relay_quiet")
	}
	// Final sync: nobody touches the legacy mailbox now. A forced cut-over
	// of an account whose password is not known here skips it: follow
	// syncs at the user's next logins bring what the last sync missed.
	if password != "" {
		conv, err := c.Sync.Converge(ctx, account, password, 10)
		stages = append(stages, "final_passes", len(conv.Passes))
		stage("final_sync")
		if err != nil {
			return err
		}
	} else {
		c.log().Warn("forced cut-over without the user's password: no final sync", "account", account)
	}
	// Local delivery needs an INBOX, even for an account cut over before
	// any copy.
	if acct, err := c.Store.Account(ctx, account); err != nil {
		return err
	} else if _, err := c.Store.MailboxByName(ctx, acct.ID, "INBOX"); errors.Is(err, store.ErrNotFound) {
		if _, err := c.Store.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", Subscribed: true}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := c.Store.Transition(ctx, account, store.StateCutover, store.StateCaptured); err != nil {
		return err
	}
	c.releaseHeld(ctx, account)
	return nil
}

// releaseHeld delivers the mail held during the cut-over. A failure is
// put right by the relay queue, which delivers the held mail of captured
// accounts at every pass.
func (c *Cutover) releaseHeld(ctx context.Context, account string) {
	acct, err := c.Store.Account(ctx, account)
	if err != nil {
		c.log().Error("held mail could not be delivered at the cut-over; it waits and is delivered later", "account", account, "err", err)
		return
	}
	if n, err := c.Store.ReleaseHeldPlaced(ctx, acct.ID, c.Place); err != nil {
		c.log().Error("held mail could not be delivered at the cut-over; it waits and is delivered later", "account", account, "err", err)
	} else if n > 0 {
		c.log().Info("held mail delivered", "account", account, "messages", n)
	}
}

// Recover, at start, puts accounts whose cut-over a stop interrupted back
// to capturing: the legacy server still has everything, their next
// convergence cuts them over again, and mail held for them is delivered
// then. Mail still held for accounts that are captured (a stop between
// the end of a cut-over and the release of what it held) is delivered.
func (c *Cutover) Recover(ctx context.Context) error {
	accounts, err := c.Store.Accounts(ctx)
	if err != nil {
		return err
	}
	holding, err := c.Store.HoldingAccounts(ctx)
	if err != nil {
		return err
	}
	for _, a := range accounts {
		if a.State == store.StateCaptured && holding[a.ID] {
			n, err := c.Store.ReleaseHeldPlaced(ctx, a.ID, c.Place)
			if err != nil {
				return fmt.Errorf("deliver the mail held for %s: %w", a.Name, err)
			}
			c.log().Warn("held mail of a captured account delivered at start", "account", a.Name, "messages", n)
		}
		if a.State != store.StateCutover {
			continue
		}
		if err := c.Store.Transition(ctx, a.Name, store.StateCutover, store.StateCapturing); err != nil {
			return fmt.Errorf("recover the cut-over of %s: %w", a.Name, err)
		}
		c.log().Warn("a stop interrupted this account's cut-over: back to capturing", "account", a.Name)
	}
	return nil
}

// RunRequested carries out the cut-overs `mailcapture cutover` asked for
// (recorded in the store beside the running server), with the password
// password knows for the account, if any, for the final sync.
func (c *Cutover) RunRequested(ctx context.Context, password func(account string) string) {
	names, err := c.Store.CutoverRequests(ctx)
	if err != nil {
		c.log().Warn("the requested cut-overs could not be read", "err", err)
		return
	}
	for _, name := range names {
		pw := password(name)
		c.log().Info("forced cut-over", "account", name, "final_sync", pw != "")
		if err := c.Run(ctx, name, pw); err != nil {
			c.log().Error("a requested cut-over failed; the account stays on the legacy server", "account", name, "err", err)
		}
		if err := c.Store.ClearCutoverRequest(ctx, name); err != nil {
			c.log().Warn("a carried-out cut-over request could not be cleared", "account", name, "err", err)
		}
	}
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
