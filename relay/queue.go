package relay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
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
	// Workers is how many messages are handed to the legacy server at
	// once. Default 1: more compete with accepting mail for the store's
	// one writer (in `make bench`, two workers took the legacy route's
	// acceptance rate from 1.31x Postfix's to 0.85x).
	Workers int
	// RetryMin and RetryMax bound the wait before a failed message is
	// tried again: RetryMin, doubling with each attempt, at most RetryMax.
	// Defaults 1m and 64m.
	RetryMin, RetryMax time.Duration
	// Poll is how often the spool is scanned when idle (retries and drops
	// asked for by `mailcapture queue` are seen then). Default 2s.
	Poll time.Duration
	Log  *slog.Logger
	// Observer, if set, counts delivered and bounced messages.
	Observer Observer
	// Checker, if set, is asked before a message whose last attempt ended
	// in doubt (the process was killed, or the connection failed after the
	// data was sent) is sent again: recipients whose legacy mailbox
	// already holds it are done. Without it, or when it fails, the message
	// is sent again and may arrive twice.
	Checker DeliveryChecker
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
		full := q.pass(ctx)
		if q.afterPass != nil {
			q.afterPass()
		}
		if full && ctx.Err() == nil {
			continue // a backlog: the next batch at once
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

// passBatch is how many due messages one pass reads.
const passBatch = 100

// pass delivers what is due, Workers messages at a time. It reports
// whether it read a full batch (more may be due).
func (q *Queue) pass(ctx context.Context) (full bool) {
	due, err := q.Store.DueSpool(ctx, time.Now(), passBatch)
	if err != nil {
		q.log().Error("relay: read spool", "err", err)
		return false
	}
	workers := q.Workers
	if workers <= 0 {
		workers = 1
	}
	slots := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for _, e := range due {
		if ctx.Err() != nil {
			break
		}
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			q.deliver(ctx, e)
		}()
	}
	wg.Wait()
	return len(due) == passBatch
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
	defer f.Close()
	log := q.log().With("id", e.ID)
	to, inDoubt := e.To, false
	if q.Store.InFlight(e.ID) {
		to, inDoubt = q.undelivered(ctx, e, f, log)
		if len(to) == 0 {
			if err := q.Store.Dequeue(ctx, e.ID); err != nil {
				log.Error("relay: dequeue", "err", err)
				return
			}
			q.observe(e, "delivered", len(e.To))
			log.Info("relay: delivered to the legacy server (found there after an interrupted attempt)", "rcpts", len(e.To))
			return
		}
	}
	if err := q.Store.MarkInFlight(e.ID); err != nil {
		log.Warn("relay: mark in flight; a crash during this attempt may send the message twice", "err", err)
	}
	d := q.Legacy.Deliver(ctx, e.From, to, io.NewSectionReader(f, 0, 1<<62))
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
		wait := min(orDuration(q.RetryMin, time.Minute)<<min(e.Attempts, 20), orDuration(q.RetryMax, 64*time.Minute))
		if err := q.Store.Defer(ctx, e.ID, d.Retry, time.Now().Add(wait), d.Err.Error()); err != nil {
			log.Error("relay: defer", "err", err)
			return
		}
		q.observe(e, "retried", len(d.Retry))
		log.Warn("relay: deferred", "retry_in", wait, "err", d.Err, "in_doubt", d.Uncertain || inDoubt)
		if !d.Uncertain && !inDoubt {
			if err := q.Store.ClearInFlight(e.ID); err != nil {
				log.Warn("relay: clear in-flight mark", "err", err)
			}
		}
	}
}

// DeliveryChecker looks into a recipient's legacy mailbox.
type DeliveryChecker interface {
	// Holds reports whether rcpt's legacy INBOX holds a message whose
	// header field contains value.
	Holds(ctx context.Context, rcpt, field, value string) (bool, error)
}

// undelivered returns the recipients of e whose legacy mailbox does not
// hold it yet, after an attempt that ended in doubt. inDoubt is true when
// some recipient could not be checked: it is sent again and may arrive
// twice.
func (q *Queue) undelivered(ctx context.Context, e store.SpoolEntry, f io.ReaderAt, log *slog.Logger) (to []string, inDoubt bool) {
	field, value := traceOf(f, e.MessageID)
	if q.Checker == nil || value == "" {
		log.Warn("relay: an earlier attempt may have delivered this message; sending it again unchecked", "checker", q.Checker != nil)
		q.observe(e, "resent_unchecked", len(e.To))
		return e.To, true
	}
	for _, rcpt := range e.To {
		held, err := q.Checker.Holds(ctx, rcpt, field, value)
		switch {
		case err != nil:
			log.Warn("relay: an earlier attempt may have delivered this message; checking the legacy mailbox failed, sending it again", "rcpt", rcpt, "err", err)
			q.observe(e, "resent_unchecked", 1)
			to, inDoubt = append(to, rcpt), true
		case held:
			log.Info("relay: the legacy mailbox already holds the message; not sent again", "rcpt", rcpt)
		default:
			to = append(to, rcpt)
		}
	}
	return to, inDoubt
}

// traceOf names what identifies a spooled message in a mailbox: the id of
// the Received header this hop added (unique to the message), or, for
// messages without one (DSNs), its Message-ID.
func traceOf(f io.ReaderAt, messageID string) (field, value string) {
	buf := make([]byte, 1024)
	n, _ := f.ReadAt(buf, 0)
	if m := receivedID.FindSubmatch(buf[:n]); m != nil {
		return "Received", string(m[1])
	}
	if messageID != "" {
		return "Message-ID", messageID
	}
	return "", ""
}

// receivedID finds the id of this hop's Received header at the top of a
// spooled message.
var receivedID = regexp.MustCompile(`\A(?i:Received:)[^\n]*\n\s+by \S+ \(mailcapture\) with ESMTP id ([a-z0-9]+);`)

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
