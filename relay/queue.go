package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/store"
)

// Queue relays spooled mail to the legacy server, with exponential
// backoff. Recipients the legacy server refuses for good, and those still
// undelivered after Lifetime, are reported to the sender in a DSN (RFC
// 3464), itself relayed like any message, from the null sender.
type Queue struct {
	Store  *store.Store
	Legacy Legacy
	// Lifetime bounds how long a message is retried. Default 5 days.
	Lifetime time.Duration
	// Poll is how often the spool is scanned when idle (retries and drops
	// asked for by `mailcapture queue` are seen then). Default 2s.
	Poll time.Duration
	Log  *slog.Logger
	// Observer, if set, counts delivered and bounced messages.
	Observer Observer
	// afterPass, if set, runs after each scan (tests wait on it).
	afterPass func()

	wakeOnce sync.Once
	wake     chan struct{}
}

func (q *Queue) wakeChan() chan struct{} {
	q.wakeOnce.Do(func() { q.wake = make(chan struct{}, 1) })
	return q.wake
}

// Wake makes the queue scan the spool now (a message was just spooled).
func (q *Queue) Wake() {
	select {
	case q.wakeChan() <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends.
func (q *Queue) Run(ctx context.Context) {
	for {
		q.pass(ctx)
		if q.afterPass != nil {
			q.afterPass()
		}
		select {
		case <-ctx.Done():
			return
		case <-q.wakeChan():
		case <-time.After(orDuration(q.Poll, 2*time.Second)):
		}
	}
}

func (q *Queue) log() *slog.Logger {
	if q.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return q.Log
}

// pass delivers what is due.
func (q *Queue) pass(ctx context.Context) {
	due, err := q.Store.DueSpool(ctx, time.Now(), 100)
	if err != nil {
		q.log().Error("relay: read spool", "err", err)
		return
	}
	for _, e := range due {
		if ctx.Err() != nil {
			return
		}
		q.deliver(ctx, e)
	}
}

func (q *Queue) deliver(ctx context.Context, e store.SpoolEntry) {
	if e.DropRequested {
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			q.log().Error("relay: drop", "id", e.ID, "err", err)
			return
		}
		q.log().Warn("relay: dropped at the admin's request", "id", e.ID, "from", e.From, "to", strings.Join(e.To, ","), "message_id", e.MessageID)
		return
	}
	f, err := q.Store.OpenSpooled(e.ID)
	if err != nil {
		q.log().Error("relay: open spooled message", "id", e.ID, "err", err)
		return
	}
	d := q.Legacy.Deliver(ctx, e.From, e.To, f)
	f.Close()
	log := q.log().With("id", e.ID)
	var failures []Failure
	for rcpt, se := range d.Refused {
		log.Warn("relay: the legacy server refused a recipient", "rcpt", rcpt, "err", se)
		failures = append(failures, Failure{Recipient: rcpt, Status: statusOf(se), Diagnostic: se.Error()})
	}
	lifetime := orDuration(q.Lifetime, 5*24*time.Hour)
	expired := len(d.Retry) > 0 && time.Since(e.ReceivedAt) > lifetime
	if expired {
		for _, rcpt := range d.Retry {
			failures = append(failures, Failure{Recipient: rcpt, Status: "4.4.7",
				Diagnostic: fmt.Sprintf("delivery time expired after %s; last error: %v", lifetime, d.Err)})
		}
	}
	if len(failures) > 0 {
		// The DSN is spooled before the original leaves: a crash in
		// between bounces twice at worst, never loses the notice.
		if err := q.enqueueDSN(ctx, e, failures); err != nil {
			log.Error("relay: spool a DSN", "err", err)
			q.Store.Defer(ctx, e.ID, e.To, time.Now().Add(time.Minute), "spooling the DSN failed: "+err.Error())
			return
		}
		q.observe(e, "bounced", len(failures))
		log.Warn("relay: returned to the sender", "from", e.From, "failed", len(failures), "expired", expired)
	}
	switch {
	case len(d.Retry) == 0 || expired:
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			log.Error("relay: dequeue", "err", err)
		}
		if delivered := len(e.To) - len(failures); delivered > 0 {
			q.observe(e, "delivered", delivered)
			log.Info("relay: delivered to the legacy server", "rcpts", delivered)
		}
	default:
		if delivered := len(e.To) - len(d.Retry) - len(d.Refused); delivered > 0 {
			q.observe(e, "delivered", delivered)
		}
		wait := time.Minute << min(e.Attempts, 6) // 1m, 2m, ... 64m
		q.Store.Defer(ctx, e.ID, d.Retry, time.Now().Add(wait), d.Err.Error())
		log.Info("relay: deferred", "retry_in", wait, "err", d.Err)
	}
}

// statusOf is the enhanced status code of an SMTP refusal.
func statusOf(se *smtp.SMTPError) string {
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return fmt.Sprintf("%d.0.0", se.Code/100)
}

// observe counts recipients of a relayed message by result.
func (q *Queue) observe(e store.SpoolEntry, result string, n int) {
	if q.Observer == nil {
		return
	}
	for range n {
		q.Observer.SMTPMessage("legacy", result)
	}
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
