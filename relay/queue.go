package relay

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"mailcapture/store"
)

// Queue relays spooled mail to the legacy server, with exponential
// backoff. A message the legacy server refuses for good, or still
// undelivered after Lifetime, stays in the spool with its last error and no
// further attempt, for the admin to see.
type Queue struct {
	Store  *store.Store
	Legacy Legacy
	// Lifetime bounds how long a message is retried. Default 5 days.
	Lifetime time.Duration
	// Poll is how often the spool is scanned when idle. Default 10s.
	Poll time.Duration
	Log  *slog.Logger
	// afterPass, if set, runs after each scan (tests wait on it).
	afterPass func()
}

// never is when a given-up message would be retried: not in practice.
var never = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

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
		case <-time.After(orDuration(q.Poll, 10*time.Second)):
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
	f, err := q.Store.OpenSpooled(e.ID)
	if err != nil {
		q.log().Error("relay: open spooled message", "id", e.ID, "err", err)
		return
	}
	d := q.Legacy.Deliver(ctx, e.From, e.To, f)
	f.Close()
	log := q.log().With("id", e.ID)
	var refused []string
	for rcpt, se := range d.Refused {
		refused = append(refused, rcpt+": "+se.Error())
		log.Warn("relay: the legacy server refused a recipient", "rcpt", rcpt, "err", se)
	}
	switch {
	case len(d.Retry) == 0 && len(refused) == 0:
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			log.Error("relay: dequeue", "err", err)
		}
		log.Info("relay: delivered to the legacy server", "rcpts", len(e.To))
	case len(d.Retry) == 0:
		// Refused for good: kept, with the reason, for the admin.
		q.Store.Defer(ctx, e.ID, e.To, never, "refused: "+strings.Join(refused, "; "))
	case time.Since(e.ReceivedAt) > orDuration(q.Lifetime, 5*24*time.Hour):
		q.Store.Defer(ctx, e.ID, d.Retry, never, "expired after "+orDuration(q.Lifetime, 5*24*time.Hour).String()+": "+d.Err.Error())
	default:
		wait := time.Minute << min(e.Attempts, 6) // 1m, 2m, ... 64m
		q.Store.Defer(ctx, e.ID, d.Retry, time.Now().Add(wait), d.Err.Error())
		log.Info("relay: deferred", "retry_in", wait, "err", d.Err)
	}
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
