package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	"mailcapture/sieve"
	"mailcapture/store"
)

// Filters runs captured accounts' active Sieve scripts at local
// delivery: the copy for an account goes where its script says (INBOX,
// folders, with flags; nowhere), redirects and vacation replies are sent
// on, and a script that fails leaves the message in INBOX with the
// account's last error saying why.
type Filters struct {
	Store *store.Store
	// Delimiter is the recipient delimiter (the subaddress extension's
	// separator).
	Delimiter string
	// Hostname goes into the Message-IDs of replies.
	Hostname string
	Log      *slog.Logger

	mu      sync.Mutex
	cache   map[int64]compiledScript
	lastErr map[int64]string
}

type compiledScript struct {
	sum    [32]byte
	script *sieve.Script
	err    error
}

// MaxFilteredBody bounds what body tests see: a larger message is
// filtered on its header and size only.
const MaxFilteredBody = 16 << 20

func (f *Filters) log() *slog.Logger {
	if f == nil || f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

// script returns the account's active script, compiled (nil without
// one), and its compile error.
func (f *Filters) script(ctx context.Context, accountID int64) (*sieve.Script, error) {
	sc, err := f.Store.ActiveSieveScript(ctx, accountID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(sc.Script)
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.cache[accountID]; ok && c.sum == sum {
		return c.script, c.err
	}
	compiled, cerr := sieve.Compile(sc.Script, f.Delimiter)
	if cerr != nil {
		cerr = fmt.Errorf("script %q: %w", sc.Name, cerr)
	}
	if f.cache == nil {
		f.cache = map[int64]compiledScript{}
	}
	f.cache[accountID] = compiledScript{sum: sum, script: compiled, err: cerr}
	return compiled, cerr
}

// accountScript is an account's active script, or why it cannot run.
type accountScript struct {
	script *sieve.Script
	err    error
}

// scripts returns the active scripts of the plan's local accounts (none:
// the message is stored as it comes; some: it is read whole first).
func (f *Filters) scripts(ctx context.Context, p *deliveryPlan) map[int64]accountScript {
	if f == nil {
		return nil
	}
	var out map[int64]accountScript
	for _, id := range p.inboxes {
		s, err := f.script(ctx, id)
		if s == nil && err == nil {
			continue
		}
		if out == nil {
			out = map[int64]accountScript{}
		}
		out[id] = accountScript{script: s, err: err}
	}
	return out
}

// setError records an account's last script error ("" clears it),
// writing only when it changes.
func (f *Filters) setError(ctx context.Context, accountID int64, msg string) {
	f.mu.Lock()
	known, ok := f.lastErr[accountID]
	f.mu.Unlock()
	if !ok {
		_, stored, err := f.Store.SieveState(ctx, accountID)
		if err != nil {
			return
		}
		known = stored
	}
	if known != msg {
		if err := f.Store.SetSieveError(ctx, accountID, msg); err != nil {
			return
		}
	}
	f.mu.Lock()
	if f.lastErr == nil {
		f.lastErr = map[int64]string{}
	}
	f.lastErr[accountID] = msg
	f.mu.Unlock()
}

// generated is a message a script made: a vacation reply or a rejection
// notice, sent from the null sender.
type generated struct {
	account string
	to      string
	body    []byte
	// vacation, when set, is recorded as answered once it is spooled.
	vacation *vacationMemory
}

type vacationMemory struct {
	accountID      int64
	handle, sender string
}

// filtered is what the scripts made of one message.
type filtered struct {
	dests     []store.Destination
	redirects []redirect
	generated []generated
}

// redirect is a copy a script sends on; if it cannot go, it stays in the
// account's INBOX.
type redirect struct {
	to      string
	inbox   int64
	account string
}

// redirectedHeader marks a copy a script redirected, as Pigeonhole
// does: a message that comes back with the account's mark is not
// redirected again.
const redirectedHeader = "X-Sieve-Redirected-From"

func redirectedBy(hdr textproto.MIMEHeader, account string) bool {
	for _, v := range hdr.Values(redirectedHeader) {
		if strings.EqualFold(strings.TrimSpace(v), account) {
			return true
		}
	}
	return false
}

// headerSection is a message's header, up to and without the blank
// line.
func headerSection(raw []byte) []byte {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		return raw[:i+2]
	}
	return raw
}

// apply runs each local account's script on the message (raw: all of
// it) and returns where its copies go.
func (f *Filters) apply(ctx context.Context, log *slog.Logger, p *deliveryPlan, scripts map[int64]accountScript, from string, raw []byte) (filtered, error) {
	var out filtered
	hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw))).ReadMIMEHeader()
	if err != nil && len(hdr) == 0 {
		hdr = textproto.MIMEHeader{}
	}
	msg := sieve.Message{Header: hdr, Size: len(raw)}
	if len(raw) <= MaxFilteredBody {
		msg.Raw = raw
	}
	for _, id := range p.inboxes {
		inbox, err := f.Store.MailboxByName(ctx, id, "INBOX")
		if err != nil {
			return out, err
		}
		acct := p.accounts[id]
		as, ok := scripts[id]
		if !ok {
			out.dests = append(out.dests, store.Destination{MailboxID: inbox.ID})
			continue
		}
		script, err := as.script, as.err
		var o sieve.Outcome
		if err == nil {
			o, err = script.Run(ctx, sieve.Envelope{From: from, To: p.rcpt[id]}, msg)
		}
		if err != nil {
			// Never a lost message: INBOX, and the account says why.
			log.Warn("a Sieve script failed; the message went to INBOX", "account", acct.Name, "err", err)
			f.setError(ctx, id, err.Error())
			out.dests = append(out.dests, store.Destination{MailboxID: inbox.ID})
			continue
		}
		var failures []string
		placed := map[int64]bool{}
		place := func(mbox int64, flags []string) {
			if !placed[mbox] {
				placed[mbox] = true
				out.dests = append(out.dests, store.Destination{MailboxID: mbox, Flags: flags})
			}
		}
		for _, fi := range o.FileInto {
			mb, err := f.Store.MailboxByName(ctx, id, fi.Mailbox)
			if err != nil {
				// As Pigeonhole without :create: the copy is kept in INBOX.
				failures = append(failures, fmt.Sprintf("fileinto %q: no such folder; kept in INBOX", fi.Mailbox))
				place(inbox.ID, fi.Flags)
				continue
			}
			place(mb.ID, fi.Flags)
		}
		if o.Keep {
			place(inbox.ID, o.KeepFlags)
		}
		for _, r := range o.Redirects {
			switch {
			case strings.EqualFold(r, acct.Name) || strings.EqualFold(r, p.rcpt[id]):
				failures = append(failures, fmt.Sprintf("redirect to %s: the account's own address; kept in INBOX", r))
				place(inbox.ID, nil)
			case redirectedBy(hdr, acct.Name):
				// Loop guard: this account redirected the message before.
				failures = append(failures, fmt.Sprintf("redirect to %s: the message was redirected by this account before (a loop); kept in INBOX", r))
				place(inbox.ID, nil)
			default:
				out.redirects = append(out.redirects, redirect{to: r, inbox: inbox.ID, account: acct.Name})
			}
		}
		if o.Reject != "" && from != "" {
			out.generated = append(out.generated, generated{account: acct.Name, to: from, body: f.rejection(acct.Name, from, hdr, headerSection(raw), o.Reject)})
		}
		if v := o.Vacation; v != nil {
			g, why, err := f.vacation(ctx, acct, p.rcpt[id], from, hdr, v)
			switch {
			case err != nil:
				failures = append(failures, "vacation: "+err.Error())
			case g != nil:
				out.generated = append(out.generated, *g)
			default:
				log.Debug("no vacation reply", "account", acct.Name, "sender", from, "why", why)
			}
		}
		f.setError(ctx, id, strings.Join(failures, "; "))
	}
	return out, nil
}

// Vacation periods (RFC 5230 4.1: the site may bound :days).
const (
	vacationDefault = 7 * 24 * time.Hour
	vacationMin     = 24 * time.Hour
	vacationMax     = 90 * 24 * time.Hour
)

// vacation decides whether the vacation command answers this message
// (RFC 5230 4.5, 4.6, RFC 3834 2) and makes the reply.
func (f *Filters) vacation(ctx context.Context, acct store.Account, rcpt, from string, hdr textproto.MIMEHeader, v *sieve.Vacation) (*generated, string, error) {
	if from == "" {
		return nil, "null sender", nil
	}
	local, _, _ := strings.Cut(strings.ToLower(from), "@")
	switch {
	case local == "mailer-daemon", local == "listserv", local == "majordomo", local == "postmaster",
		strings.HasPrefix(local, "owner-"), strings.HasSuffix(local, "-request"), strings.HasPrefix(local, "bounce"):
		return nil, "a robot sender", nil
	}
	if as := strings.ToLower(strings.TrimSpace(hdr.Get("Auto-Submitted"))); as != "" && as != "no" {
		return nil, "auto-submitted", nil
	}
	switch strings.ToLower(strings.TrimSpace(hdr.Get("Precedence"))) {
	case "bulk", "list", "junk":
		return nil, "bulk mail", nil
	}
	for _, h := range []string{"List-Id", "List-Post", "List-Unsubscribe", "List-Help", "X-Auto-Response-Suppress"} {
		if hdr.Get(h) != "" {
			return nil, "list mail", nil
		}
	}
	// The user's addresses are the envelope recipient as it came (with
	// its extension) and :addresses, as Pigeonhole has them.
	mine := map[string]bool{strings.ToLower(rcpt): true}
	for _, a := range v.Addresses {
		mine[strings.ToLower(a)] = true
	}
	if mine[strings.ToLower(from)] {
		return nil, "from the user", nil
	}
	addressed := false
	for _, h := range []string{"To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc"} {
		for _, field := range hdr.Values(h) {
			list, err := mail.ParseAddressList(field)
			if err != nil {
				continue
			}
			for _, a := range list {
				addressed = addressed || mine[strings.ToLower(a.Address)]
			}
		}
	}
	if !addressed {
		return nil, "the user is not in a recipient header", nil
	}
	period := vacationDefault
	switch {
	case v.Seconds > 0:
		period = time.Duration(v.Seconds) * time.Second
	case v.Days > 0:
		period = time.Duration(v.Days) * 24 * time.Hour
	}
	period = min(max(period, vacationMin), vacationMax)
	handle := v.Handle
	now := time.Now()
	answered, err := f.Store.VacationAnswered(ctx, acct.ID, handle, from, now.Add(-period))
	if err != nil {
		return nil, "", err
	}
	if answered {
		return nil, "answered within the period", nil
	}
	replyFrom := v.From
	if replyFrom == "" {
		replyFrom = rcpt
		if base, ext, ok := strings.Cut(rcpt, "+"); ok {
			_, domain, _ := strings.Cut(ext, "@")
			replyFrom = base + "@" + domain
		}
	}
	subject := v.Subject
	if subject == "" {
		subject = "Auto: " + decodedSubject(hdr.Get("Subject"))
	}
	var b bytes.Buffer
	if a, err := mail.ParseAddress(replyFrom); err == nil && a.Name == "" {
		replyFrom = "<" + a.Address + ">"
	}
	fmt.Fprintf(&b, "From: %s\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n", replyFrom, from, encodeHeader(subject),
		now.Format(time.RFC1123Z), f.messageID())
	if id := strings.TrimSpace(hdr.Get("Message-Id")); id != "" {
		fmt.Fprintf(&b, "In-Reply-To: %s\r\nReferences: %s\r\n", id, strings.TrimSpace(hdr.Get("References")+" "+id))
	}
	b.WriteString("Auto-Submitted: auto-replied (vacation)\r\nPrecedence: bulk\r\nX-Auto-Response-Suppress: All\r\nMIME-Version: 1.0\r\n")
	if v.Mime {
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(v.Reason, "\r\n", "\n"), "\n", "\r\n"))
	} else {
		b.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(v.Reason, "\r\n", "\n"), "\n", "\r\n"))
		b.WriteString("\r\n")
	}
	return &generated{account: acct.Name, to: from, body: b.Bytes(), vacation: &vacationMemory{accountID: acct.ID, handle: handle, sender: from}}, "", nil
}

// rejection is the notice a reject action sends the sender (RFC 5429
// 2.1.1: a message disposition notification, from the postmaster of the
// account's domain, with the rejected message's header).
func (f *Filters) rejection(account, to string, hdr textproto.MIMEHeader, header []byte, reason string) []byte {
	boundary := "rejected-" + hex.EncodeToString(random(8))
	_, domain, _ := strings.Cut(account, "@")
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Postmaster <postmaster@%s>\r\nTo: <%s>\r\nSubject: Rejected: %s\r\nDate: %s\r\nMessage-ID: %s\r\n", domain, to,
		encodeHeader(decodedSubject(hdr.Get("Subject"))), time.Now().Format(time.RFC1123Z), f.messageID())
	b.WriteString("Auto-Submitted: auto-replied (rejected)\r\nPrecedence: bulk\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=disposition-notification; boundary=%q\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nYour message to <%s> was automatically rejected:\r\n%s\r\n", boundary, account, reason)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: message/disposition-notification\r\n\r\nReporting-UA: %s; mailcapture\r\nFinal-Recipient: rfc822; %s\r\n", boundary, f.Hostname, account)
	if id := hdr.Get("Message-Id"); id != "" {
		fmt.Fprintf(&b, "Original-Message-ID: %s\r\n", id)
	}
	fmt.Fprintf(&b, "Disposition: automatic-action/MDN-sent-automatically; deleted\r\n\r\n--%s\r\nContent-Type: message/rfc822\r\n\r\n", boundary)
	b.Write(header)
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

func (f *Filters) messageID() string {
	host := f.Hostname
	if host == "" {
		host = "localhost"
	}
	return fmt.Sprintf("<%s@%s>", hex.EncodeToString(random(12)), host)
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func decodedSubject(s string) string {
	dec := new(mime.WordDecoder)
	if d, err := dec.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

// encodeHeader encodes a header value that is not ASCII (RFC 2047).
func encodeHeader(s string) string {
	for _, r := range s {
		if r >= 0x80 || r < 0x20 {
			return mime.QEncoding.Encode("utf-8", s)
		}
	}
	return s
}

// deliver stores the message for the plan's destinations in one
// transaction; the local accounts' Sieve scripts decide first where their
// copies go (the message is then read whole), their redirects join the
// same transaction, and their replies follow it.
func (b *Backend) deliver(ctx context.Context, log *slog.Logger, from string, p *deliveryPlan, body io.Reader) ([]store.Destination, []store.Delivered, error) {
	scripts := b.Filters.scripts(ctx, p)
	if len(scripts) == 0 {
		dests, err := p.destinations(ctx, b.Store)
		if err != nil {
			return nil, nil, err
		}
		done, err := b.Store.Deliver(ctx, from, dests, body)
		return dests, done, err
	}
	raw, err := io.ReadAll(body) // bounded by the server's SIZE
	if err != nil {
		return nil, nil, err
	}
	res, err := b.Filters.apply(ctx, log, p, scripts, from, raw)
	if err != nil {
		return nil, nil, err
	}
	rest := *p
	rest.inboxes = nil
	others, err := rest.destinations(ctx, b.Store)
	if err != nil {
		return nil, nil, err
	}
	dests := append(res.dests, others...)
	dests = b.sendRedirects(ctx, log, from, res.redirects, raw, dests)
	var done []store.Delivered
	if len(dests) > 0 {
		if done, err = b.Store.Deliver(ctx, from, dests, bytes.NewReader(raw)); err != nil {
			return nil, nil, err
		}
	}
	for _, g := range res.generated {
		b.sendGenerated(ctx, log, g)
	}
	return dests, done, nil
}

// sendGenerated routes and stores a message a script made, from the
// null sender; a vacation reply is remembered once it is on its way. A
// failure here loses the reply only, never the message it answers.
func (b *Backend) sendGenerated(ctx context.Context, log *slog.Logger, g generated) {
	targets, err := b.routeGenerated(ctx, log, g.to)
	if err != nil {
		log.Warn("a Sieve reply has nowhere to go", "account", g.account, "to", g.to, "err", err)
		return
	}
	var p deliveryPlan
	for _, t := range targets {
		p.add(t)
	}
	dests, err := p.destinations(ctx, b.Store)
	if err == nil {
		_, err = b.Store.Deliver(ctx, "", dests, bytes.NewReader(g.body))
	}
	if err != nil {
		log.Error("a Sieve reply could not be stored", "account", g.account, "to", g.to, "err", err)
		return
	}
	if v := g.vacation; v != nil {
		if err := b.Store.RecordVacation(ctx, v.accountID, v.handle, v.sender, time.Now()); err != nil {
			log.Error("a vacation reply could not be remembered: the sender may get another", "account", g.account, "err", err)
		}
		log.Info("vacation reply sent", "account", g.account, "to", g.to)
	}
	if len(p.legacy)+len(p.outbound) > 0 && b.Spooled != nil {
		b.Spooled()
	}
}

// routeGenerated routes a redirect or a reply: an address of the hosted
// domains as inbound mail; another domain's through the outbound relay
// when there is one, else through the legacy server's intake (which must
// relay it for us) until the retirement.
func (b *Backend) routeGenerated(ctx context.Context, log *slog.Logger, to string) ([]target, error) {
	if b.directory().Hosted(to) {
		return b.route(ctx, log, to)
	}
	if b.Outbound {
		return []target{{route: routeOutbound, address: to}}, nil
	}
	if b.retired() {
		return nil, errors.New("no outbound relay is configured and the legacy server is retired")
	}
	return b.route(ctx, log, to)
}

// sendRedirects stores the redirected copies, each marked with its
// account (the loop guard) and so a body of its own, before the message
// itself: a crash in between sends a redirect twice at worst, never
// loses a copy. A redirect that cannot go keeps its copy in the
// account's INBOX (added to dests).
func (b *Backend) sendRedirects(ctx context.Context, log *slog.Logger, from string, redirects []redirect, raw []byte, dests []store.Destination) []store.Destination {
	for _, r := range redirects {
		targets, err := b.routeGenerated(ctx, log, r.to)
		var p deliveryPlan
		for _, t := range targets {
			p.add(t)
		}
		var more []store.Destination
		if err == nil {
			more, err = p.destinations(ctx, b.Store)
		}
		if err == nil {
			marked := io.MultiReader(strings.NewReader(redirectedHeader+": "+r.account+"\r\n"), bytes.NewReader(raw))
			_, err = b.Store.Deliver(ctx, from, more, marked)
		}
		if err != nil {
			log.Warn("a Sieve redirect could not be sent on; the copy stays in INBOX", "to", r.to, "err", err)
			if !slices.ContainsFunc(dests, func(d store.Destination) bool { return d.MailboxID == r.inbox }) {
				dests = append(dests, store.Destination{MailboxID: r.inbox})
			}
			continue
		}
		if len(p.legacy)+len(p.outbound) > 0 && b.Spooled != nil {
			b.Spooled()
		}
	}
	return dests
}

// PlaceHeld decides where mail held during an account's cut-over goes
// once it is released (store.Placer): the account's Sieve script runs on
// it as on any local delivery.
func (b *Backend) PlaceHeld(ctx context.Context, e store.SpoolEntry, inbox int64) ([]store.Placement, error) {
	into := []store.Placement{{MailboxID: inbox}}
	if b.Filters == nil {
		return into, nil
	}
	acct, err := b.Store.AccountByID(ctx, e.AccountID)
	if err != nil {
		return nil, err
	}
	p := &deliveryPlan{inboxes: []int64{acct.ID}, accounts: map[int64]store.Account{acct.ID: acct}, rcpt: map[int64]string{acct.ID: acct.Name}}
	if len(e.To) > 0 {
		p.rcpt[acct.ID] = e.To[0]
	}
	scripts := b.Filters.scripts(ctx, p)
	if len(scripts) == 0 {
		return into, nil
	}
	f, err := b.Store.OpenSpooled(e.ID)
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	log := b.log().With("account", acct.Name)
	res, err := b.Filters.apply(ctx, log, p, scripts, e.From, raw)
	if err != nil {
		return nil, err
	}
	dests := b.sendRedirects(ctx, log, e.From, res.redirects, raw, res.dests)
	for _, g := range res.generated {
		b.sendGenerated(ctx, log, g)
	}
	var out []store.Placement
	for _, d := range dests {
		if d.MailboxID != 0 {
			out = append(out, store.Placement{MailboxID: d.MailboxID, Flags: d.Flags})
		}
	}
	return out, nil
}
