package front

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"mailcapture/capture"
	"mailcapture/store"
)

// Cutover moves a converged account from the legacy server to the store
// (DESIGN.md, "cutover"): logins wait, proxied IMAP sessions end at a
// command boundary, proxied POP3 sessions may finish (then are cut, which
// rolls back their deletions), relayed mail on its way to the legacy
// server arrives (later mail is held in the spool), a final sync runs with no client touching
// the legacy mailbox, and the account becomes captured. If anything fails
// the account goes back to capturing, served by the legacy server as
// before, and the error is returned.
type Cutover struct {
	Store  *store.Store
	Engine *capture.Engine
	IMAP   *IMAPFront
	POP3   *POP3Backend
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
	// Switched, if set, runs once the account is captured (the relay
	// delivers the mail it held during the cut-over).
	Switched func(ctx context.Context, account store.Account)
	Log      *slog.Logger
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
			log.Error("cut-over: back to capturing", "err", terr)
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
	if c.POP3 != nil {
		wctx, cancel := context.WithTimeout(ctx, orDuration(c.POP3Grace, 30*time.Second))
		c.POP3.FinishSessions(wctx, account)
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
		conv, err := c.Engine.Converge(ctx, account, password, 10)
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
	if c.Switched != nil {
		if acct, err := c.Store.Account(ctx, account); err == nil {
			c.Switched(ctx, acct)
		}
	}
	return nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
