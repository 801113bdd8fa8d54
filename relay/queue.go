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

	"mailcapture/addresses"
	"mailcapture/labels"
	"mailcapture/store"
)

// Queue relays spooled mail to the legacy server, with exponential
// backoff. Recipients the legacy server refuses for good, and those still
// undelivered after Lifetime, are reported to the sender in a DSN (RFC
// 3464), itself relayed like any message, from the null sender.
type Queue struct {
	Store  *store.Store
	Legacy Legacy
	// Directory finds the account of each recipient; default: the
	// store's accounts, no extensions.
	Directory *addresses.Directory
	// Outbound, if set, is the outbound relay: mail users submitted for
	// other domains (the outbound spool route) is relayed to it.
	Outbound *Legacy
	// Place, if set, decides where held mail it releases goes (the
	// account's Sieve script); nil: INBOX.
	Place store.Placer
	// Retired, if set, tells whether the legacy server is gone: then
	// spooled mail is not sent there but resolved again, delivered to
	// the captured accounts it reaches and returned to its sender for the
	// rest, and no connection is made to the legacy server.
	Retired func() bool
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
	active   deliveries
	dirOnce  sync.Once
	dir      *addresses.Directory
}

func (q *Queue) directory() *addresses.Directory {
	q.dirOnce.Do(func() {
		q.dir = q.Directory
		if q.dir == nil {
			q.dir = &addresses.Directory{Store: q.Store}
		}
	})
	return q.dir
}

// accountKeys are the lower-case account names of rcpts, as Quiesce is
// asked for them (an address of an unknown account stands for itself).
func (q *Queue) accountKeys(ctx context.Context, rcpts []string) []string {
	keys := make([]string, 0, len(rcpts))
	for _, r := range rcpts {
		key := q.directory().Naming.Base(r)
		if acct, found, err := q.directory().AccountOf(ctx, r); err == nil && found {
			key = acct.Name
		}
		keys = append(keys, strings.ToLower(key))
	}
	return keys
}

// deliveries counts, per recipient, the messages being handed to the
// legacy server right now, so that a cut-over can wait for them.
type deliveries struct {
	mu      sync.Mutex
	n       map[string]int
	changed chan struct{} // closed (and replaced) whenever a count drops
}

// enter counts a delivery to rcpts; the returned func ends it.
func (d *deliveries) enter(rcpts []string) (leave func()) {
	d.mu.Lock()
	if d.n == nil {
		d.n = map[string]int{}
	}
	for _, r := range rcpts {
		d.n[r]++
	}
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, r := range rcpts {
			if d.n[r]--; d.n[r] == 0 {
				delete(d.n, r)
			}
		}
		if d.changed != nil {
			close(d.changed)
			d.changed = nil
		}
	}
}

// wait returns once no delivery to rcpt is in progress, or when ctx ends.
func (d *deliveries) wait(ctx context.Context, rcpt string) error {
	for {
		d.mu.Lock()
		if d.n[rcpt] == 0 {
			d.mu.Unlock()
			return nil
		}
		if d.changed == nil {
			d.changed = make(chan struct{})
		}
		changed := d.changed
		d.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Quiesce returns once no spooled message for account is on its way to
// the legacy server. A cut-over calls it after the account has left the
// capturing state: from then on the queue holds the account's mail in the
// spool instead (docs/CONTRACT.md: inbound mail is held during the cut-over), so
// the final sync sees a legacy mailbox nobody adds to.
func (q *Queue) Quiesce(ctx context.Context, account string) error {
	if err := q.active.wait(ctx, strings.ToLower(account)); err != nil {
		return fmt.Errorf("wait for relayed mail to %s: %w", account, err)
	}
	return nil
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
	q.releaseStranded(ctx)
	due, err := q.Store.DueSpool(ctx, time.Now(), passBatch)
	if err != nil {
		q.log().Error("the spool could not be read; spooled mail waits", "err", err)
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

// releaseStranded delivers mail held for accounts that are captured: a
// message whose recipient was in cut-over at RCPT time may be spooled as
// held just after the cut-over released what it held.
func (q *Queue) releaseStranded(ctx context.Context) {
	ids, err := q.Store.CapturedHolding(ctx)
	if err != nil {
		q.log().Error("held mail could not be read; it waits", "err", err)
		return
	}
	for _, id := range ids {
		n, err := q.Store.ReleaseHeldPlaced(ctx, id, q.Place)
		if err != nil {
			q.log().Error("held mail of a captured account could not be delivered; it waits", "account_id", id, "err", err)
			continue
		}
		if n > 0 {
			q.log().Info("relay: held mail of a captured account delivered", "account_id", id, "messages", n)
		}
	}
}

func (q *Queue) deliver(ctx context.Context, e store.SpoolEntry) {
	if e.DropRequested {
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			q.log().Error("a spooled message could not be dropped", "id", e.ID, "err", err)
			return
		}
		q.log().Warn("a spooled message was dropped at the admin's request", "id", e.ID, "from", e.From, "to", strings.Join(e.To, ","), "message_id", e.MessageID)
		return
	}
	log := q.log().With("id", e.ID)
	// Counted before the accounts' states are read: a cut-over that
	// begins after this waits for the attempt to end.
	if e.Route == store.RouteOutbound {
		if q.Outbound == nil {
			log.Error("mail submitted for other domains waits: no outbound relay is configured (outbound.relay.address)")
			q.Store.Defer(ctx, e.ID, e.To, time.Now().Add(orDuration(q.RetryMax, 64*time.Minute)), "no outbound relay is configured")
			return
		}
		q.relay(ctx, e, log, *q.Outbound, nil)
		return
	}
	defer q.active.enter(q.accountKeys(ctx, e.To))()
	if q.Retired != nil && q.Retired() {
		q.resolveRetired(ctx, e, log)
		return
	}
	to, err := q.reroute(ctx, e, log)
	if err != nil {
		log.Error("a spooled message could not be routed; it waits", "err", err)
		return
	}
	if len(to) == 0 {
		return
	}
	e.To = to
	q.relay(ctx, e, log, q.Legacy, q.Checker)
}

// relay hands a spooled message to the MTA it is for (the legacy server,
// or the outbound relay), with an in-doubt check through checker (nil:
// none) after an interrupted attempt.
func (q *Queue) relay(ctx context.Context, e store.SpoolEntry, log *slog.Logger, to Legacy, checker DeliveryChecker) {
	f, err := q.Store.OpenSpooled(e.ID)
	if err != nil {
		log.Error("a spooled message could not be opened; it waits", "err", err)
		return
	}
	defer f.Close()
	rcpts, inDoubt := e.To, false
	if q.Store.InFlight(e.ID) {
		rcpts, inDoubt = q.undelivered(ctx, e, f, checker, log)
		if len(rcpts) == 0 {
			if err := q.Store.Dequeue(ctx, e.ID); err != nil {
				log.Error("a delivered message could not be taken off the spool: it may be sent again", "err", err)
				return
			}
			q.observe(e, labels.SMTPDelivered, len(e.To))
			log.Info("relay: delivered to the legacy server (found there after an interrupted attempt)", "rcpts", len(e.To))
			return
		}
	}
	if err := q.Store.MarkInFlight(e.ID); err != nil {
		log.Warn("a spooled message could not be marked in flight: a crash during this attempt may send it twice", "err", err)
	}
	d := to.Deliver(ctx, e.From, rcpts, io.NewSectionReader(f, 0, 1<<62))
	var failures []Failure
	for rcpt, se := range d.Refused {
		log.Warn("the legacy server refused a recipient of a spooled message; the sender is told", "rcpt", rcpt, "err", se)
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
			log.Error("a delivery status notification could not be spooled", "err", err)
			q.Store.Defer(ctx, e.ID, e.To, time.Now().Add(time.Minute), "spooling the DSN failed: "+err.Error())
			return
		}
		q.observe(e, labels.SMTPBounced, len(failures))
		log.Warn("a spooled message could not be delivered to the legacy server and was returned to its sender", "from", e.From, "failed", len(failures), "expired", expired)
	}
	switch {
	case len(d.Retry) == 0 || expired:
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			log.Error("a delivered message could not be taken off the spool: it may be sent again", "err", err)
		}
		if delivered := len(e.To) - len(failures); delivered > 0 {
			q.observe(e, labels.SMTPDelivered, delivered)
			log.Info("relay: delivered to the legacy server", "rcpts", delivered)
		}
	default:
		if delivered := len(e.To) - len(d.Retry) - len(d.Refused); delivered > 0 {
			q.observe(e, labels.SMTPDelivered, delivered)
		}
		wait := min(orDuration(q.RetryMin, time.Minute)<<min(e.Attempts, 20), orDuration(q.RetryMax, 64*time.Minute))
		if err := q.Store.Defer(ctx, e.ID, d.Retry, time.Now().Add(wait), d.Err.Error()); err != nil {
			log.Error("a spooled message could not be rescheduled", "err", err)
			return
		}
		q.observe(e, labels.SMTPRetried, len(d.Retry))
		log.Warn("the legacy server did not take a spooled message; it will be tried again", "retry_in", wait, "err", d.Err, "in_doubt", d.Uncertain || inDoubt)
		if !d.Uncertain && !inDoubt {
			if err := q.Store.ClearInFlight(e.ID); err != nil {
				log.Warn("the in-flight mark of a spooled message could not be cleared", "err", err)
			}
		}
	}
}

// reroute holds the recipients whose account is in cut-over or captured
// (their mail no longer goes to the legacy server) and delivers at once
// what it held for accounts that are captured. It returns the recipients
// still for the legacy server.
func (q *Queue) reroute(ctx context.Context, e store.SpoolEntry, log *slog.Logger) ([]string, error) {
	var legacy []string
	moving := map[int64][]string{}
	names := map[int64]string{}
	for _, rcpt := range e.To {
		acct, found, err := q.directory().AccountOf(ctx, rcpt)
		switch {
		case err != nil:
			return nil, err
		case !found:
			legacy = append(legacy, rcpt)
		case acct.State == store.StateCutover || acct.State == store.StateCaptured:
			moving[acct.ID] = append(moving[acct.ID], rcpt)
			names[acct.ID] = acct.Name
		default:
			legacy = append(legacy, rcpt)
		}
	}
	for id, rcpts := range moving {
		if err := q.Store.HoldSpooled(ctx, e.ID, id, rcpts); err != nil {
			return nil, err
		}
		q.observe(e, labels.SMTPRerouted, len(rcpts))
		log.Info("relay: held for the recipient's cut-over instead of the legacy server", "account", names[id], "rcpts", len(rcpts))
		// Read again after holding: a cut-over that ended before this
		// point has released what it held already.
		acct, err := q.Store.Account(ctx, names[id])
		if err != nil {
			return nil, err
		}
		if acct.State == store.StateCaptured {
			n, err := q.Store.ReleaseHeldPlaced(ctx, id, q.Place)
			if err != nil {
				return nil, err
			}
			log.Info("relay: held mail delivered locally", "account", acct.Name, "messages", n)
		}
	}
	return legacy, nil
}

// resolveRetired ends a message spooled for the legacy server after its
// retirement: each recipient is resolved again (aliases too), the message
// is delivered to the captured accounts they reach (held for those in
// cut-over) and removed from the spool in one transaction, and the
// recipients that reach no mailbox here are told to the sender in a DSN
// saying why, instead of waiting for a server that will not answer.
func (q *Queue) resolveRetired(ctx context.Context, e store.SpoolEntry, log *slog.Logger) {
	var plan deliveryPlan
	var failures []Failure
	for _, rcpt := range e.To {
		res, err := q.directory().Resolve(ctx, rcpt)
		if err != nil {
			log.Error("a spooled message could not be routed; it waits", "rcpt", rcpt, "err", err)
			return
		}
		reached := false
		for _, t := range res.Targets {
			switch t.Route(true, q.Outbound != nil) {
			case addresses.RouteLocal:
				plan.add(target{route: routeLocal, address: t.Address, account: t.Account})
				reached = true
			case addresses.RouteHold:
				plan.add(target{route: routeHold, address: t.Address, account: t.Account})
				reached = true
			case addresses.RouteOutbound: // a forward or a notice outside the domains
				plan.add(target{route: routeOutbound, address: t.Address})
				reached = true
			}
		}
		if !reached {
			failures = append(failures, Failure{Recipient: rcpt, Status: "5.1.1",
				Diagnostic: "the mail server this address was on has been retired, and the address reaches no mailbox here"})
		}
	}
	// The DSN is spooled before the original leaves: a crash in between
	// sends it twice at worst, never loses it.
	if err := q.enqueueDSN(ctx, e, failures); err != nil {
		log.Error("a delivery status notification could not be spooled", "err", err)
		return
	}
	if plan.empty() {
		if err := q.Store.Dequeue(ctx, e.ID); err != nil {
			log.Error("a returned message could not be taken off the spool: it may be returned twice", "err", err)
			return
		}
	} else {
		dests, err := plan.destinations(ctx, q.Store)
		if err == nil {
			err = q.Store.DeliverSpooled(ctx, e.ID, dests)
		}
		if err != nil {
			log.Error("a spooled message could not be delivered here after the legacy server's retirement; it waits", "err", err)
			return
		}
		q.observe(e, labels.SMTPRerouted, len(e.To)-len(failures))
		log.Info("relay: mail spooled for the retired legacy server delivered here", "to", strings.Join(e.To, ","))
	}
	if len(failures) > 0 {
		q.observe(e, labels.SMTPBounced, len(failures))
		var to []string
		for _, f := range failures {
			to = append(to, f.Recipient)
		}
		if e.From == "" {
			log.Warn("a delivery status notice for an address with no mailbox here was dropped: the legacy server is retired", "to", strings.Join(to, ","))
		} else {
			log.Warn("spooled mail for addresses with no mailbox here was returned to its sender: the legacy server is retired", "from", e.From, "to", strings.Join(to, ","))
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
func (q *Queue) undelivered(ctx context.Context, e store.SpoolEntry, f io.ReaderAt, checker DeliveryChecker, log *slog.Logger) (to []string, inDoubt bool) {
	field, value := traceOf(f, e.MessageID)
	if checker == nil || value == "" {
		log.Warn("relay: an earlier attempt may have delivered this message; sending it again unchecked", "checker", checker != nil)
		q.observe(e, labels.SMTPResentUnchecked, len(e.To))
		return e.To, true
	}
	for _, rcpt := range e.To {
		held, err := checker.Holds(ctx, rcpt, field, value)
		switch {
		case err != nil:
			log.Warn("relay: an earlier attempt may have delivered this message; checking the legacy mailbox failed, sending it again", "rcpt", rcpt, "err", err)
			q.observe(e, labels.SMTPResentUnchecked, 1)
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
var receivedID = regexp.MustCompile(`\A(?i:Received:)[^\n]*\n\s+by \S+ \(mailcapture\) with ESMTP(?:SA)? id ([a-z0-9]+);`)

// statusOf is the enhanced status code of an SMTP refusal.
func statusOf(se *smtp.SMTPError) string {
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return fmt.Sprintf("%d.0.0", se.Code/100)
}

// observe counts recipients of a relayed message by route (legacy or
// outbound) and result.
func (q *Queue) observe(e store.SpoolEntry, result labels.SMTPResult, n int) {
	if q.Observer == nil {
		return
	}
	route := labels.SMTPLegacy
	if e.Route == store.RouteOutbound {
		route = labels.SMTPOutbound
	}
	for range n {
		q.Observer.SMTPMessage(route, result)
	}
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
