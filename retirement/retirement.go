// Package retirement says what would break if the legacy server went
// away now: mail still reaching accounts that are not captured, addresses
// the legacy server takes that reach no captured account, mail waiting
// in the spool for it, and legacy mailboxes with mail no follow sync
// has copied. `mailcapture retire-legacy` refuses while anything is
// listed; the status page and a gauge show the same list.
package retirement

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"mailcapture/addresses"
	"mailcapture/labels"
	"mailcapture/store"
)

// Window is how far back relayed mail counts: an address nobody wrote to
// for 30 days is not a reason to keep the legacy server.
const Window = 30 * 24 * time.Hour

// Report is what would break.
type Report struct {
	// Uncaptured are accounts not captured that mail was relayed to in
	// the window.
	Uncaptured []Account `json:"uncaptured_accounts"`
	// Unresolved are addresses mail was relayed to in the window that
	// reach no account mailcapture knows (an alias of the legacy server
	// missing from addresses.file, or a mailbox nobody logged into).
	Unresolved []Address `json:"unresolved_addresses"`
	// Forwards are alias targets outside the domains: mailcapture has no
	// way to send them once the legacy server is gone.
	Forwards []string `json:"forwards"`
	// Spooled and Held count the spool: mail waiting for the legacy
	// server, mail held for a cut-over.
	Spooled int64 `json:"spooled"`
	Held    int64 `json:"held"`
	// LegacyNews are captured accounts whose legacy mailbox holds mail
	// no follow sync copied yet (only when the legacy server could be
	// asked: see LegacyChecked).
	LegacyNews []News `json:"legacy_news"`
	// LegacyChecked tells whether the legacy mailboxes were looked into;
	// LegacyNote says why not, or which could not be.
	LegacyChecked bool   `json:"legacy_checked"`
	LegacyNote    string `json:"legacy_note,omitempty"`
}

// Account is an account not captured that still gets mail.
type Account struct {
	Name      string      `json:"name"`
	State     store.State `json:"state"`
	Addresses []string    `json:"addresses"`
	Messages  int64       `json:"messages"`
	Last      time.Time   `json:"last"`
}

// Address is a relayed address that reaches no known account.
type Address struct {
	Address  string    `json:"address"`
	Messages int64     `json:"messages"`
	Last     time.Time `json:"last"`
}

// News is a captured account's legacy mail no follow sync copied.
type News struct {
	Account string            `json:"account"`
	Folders map[string]uint32 `json:"folders"`
}

// Counts is how many of each kind the report lists.
func (r Report) Counts() map[labels.RetirementBlocker]int64 {
	return map[labels.RetirementBlocker]int64{
		labels.BlockerUncaptured: int64(len(r.Uncaptured)), labels.BlockerUnresolved: int64(len(r.Unresolved)),
		labels.BlockerForwards: int64(len(r.Forwards)), labels.BlockerSpooled: r.Spooled, labels.BlockerHeld: r.Held,
		labels.BlockerLegacyNews: int64(len(r.LegacyNews)),
	}
}

// Sentences says what would break, one sentence each.
func (r Report) Sentences() []string {
	days := int(Window.Hours() / 24)
	var out []string
	for _, a := range r.Uncaptured {
		out = append(out, fmt.Sprintf("account not captured, still getting mail: %s (%s): %d messages in %d days, the last %s, to %s",
			a.Name, a.State, a.Messages, days, a.Last.UTC().Format(time.DateTime), strings.Join(a.Addresses, ", ")))
	}
	for _, a := range r.Unresolved {
		out = append(out, fmt.Sprintf("address that reaches no mailbox here: %s: %d messages relayed in %d days, the last %s (add it to addresses.file, or capture its mailbox)",
			a.Address, a.Messages, days, a.Last.UTC().Format(time.DateTime)))
	}
	for _, f := range r.Forwards {
		out = append(out, fmt.Sprintf("alias that forwards outside the domains: %s (nothing can send it without the legacy server)", f))
	}
	if r.Spooled > 0 {
		out = append(out, fmt.Sprintf("messages spooled for the legacy server: %d (see mailcapture queue list)", r.Spooled))
	}
	if r.Held > 0 {
		out = append(out, fmt.Sprintf("messages held for cut-overs: %d", r.Held))
	}
	for _, n := range r.LegacyNews {
		var parts []string
		for folder, count := range n.Folders {
			parts = append(parts, fmt.Sprintf("%s: up to %d", folder, count))
		}
		sort.Strings(parts)
		out = append(out, fmt.Sprintf("captured account with legacy mail no follow sync copied: %s (%s); a login copies it", n.Account, strings.Join(parts, ", ")))
	}
	return out
}

// Clear tells whether nothing would break.
func (r Report) Clear() bool {
	for _, n := range r.Counts() {
		if n > 0 {
			return false
		}
	}
	return true
}

// LegacyLook asks the legacy server for a captured account's mail no
// follow sync copied (capture.Engine.LegacyNews with a master user's or
// the vault's credentials). ok is false when there are no credentials
// for the account.
type LegacyLook func(ctx context.Context, account string) (news map[string]uint32, ok bool, err error)

// Options say what a check may use.
type Options struct {
	// Now is the check's instant.
	Now time.Time
	// Look, if set, looks into captured accounts' legacy mailboxes;
	// without it they are not, and the report says so.
	Look LegacyLook
	// Outbound says an outbound relay is configured: aliases that forward
	// outside the domains keep working without the legacy server.
	Outbound bool
}

// Check builds the report.
func Check(ctx context.Context, st *store.Store, dir *addresses.Directory, opts Options) (Report, error) {
	now, look := opts.Now, opts.Look
	var r Report
	relayed, err := st.RelayedSince(ctx, now.Add(-Window))
	if err != nil {
		return r, err
	}
	uncaptured := map[string]*Account{}
	for _, seen := range relayed {
		if !dir.Hosted(seen.Address) {
			continue // a notice to a sender elsewhere, not an address of ours
		}
		res, err := dir.Resolve(ctx, seen.Address)
		if err != nil {
			return r, fmt.Errorf("resolve %s: %w", seen.Address, err)
		}
		reached := false
		for _, t := range res.Targets {
			switch {
			case !t.Hosted:
			case !t.Found:
			case t.Account.State == store.StateCaptured:
				reached = true
			default:
				a := uncaptured[t.Account.Name]
				if a == nil {
					a = &Account{Name: t.Account.Name, State: t.Account.State}
					uncaptured[t.Account.Name] = a
				}
				a.Addresses = append(a.Addresses, seen.Address)
				a.Messages += seen.Count
				if seen.Last.After(a.Last) {
					a.Last = seen.Last
				}
				reached = true
			}
		}
		if !reached {
			r.Unresolved = append(r.Unresolved, Address{Address: seen.Address, Messages: seen.Count, Last: seen.Last})
		}
	}
	for _, a := range uncaptured {
		r.Uncaptured = append(r.Uncaptured, *a)
	}
	sort.Slice(r.Uncaptured, func(i, j int) bool { return r.Uncaptured[i].Name < r.Uncaptured[j].Name })
	for _, e := range dir.Table().Entries() {
		for _, t := range e.Targets {
			if !dir.Hosted(t) && !opts.Outbound {
				r.Forwards = append(r.Forwards, e.Pattern+" → "+t)
			}
		}
	}
	if r.Spooled, r.Held, err = st.SpoolCounts(ctx); err != nil {
		return r, err
	}
	if look == nil {
		r.LegacyNote = "the legacy mailboxes were not looked into (this needs legacy.master.* or the vault)"
		return r, nil
	}
	accounts, err := st.Accounts(ctx)
	if err != nil {
		return r, err
	}
	var unchecked []string
	r.LegacyChecked = true
	for _, a := range accounts {
		if a.State != store.StateCaptured {
			continue
		}
		news, ok, err := look(ctx, a.Name)
		switch {
		case err != nil || !ok:
			unchecked = append(unchecked, a.Name)
		case len(news) > 0:
			r.LegacyNews = append(r.LegacyNews, News{Account: a.Name, Folders: news})
		}
	}
	if len(unchecked) > 0 {
		r.LegacyNote = fmt.Sprintf("%d captured accounts could not be looked into at the legacy server: %s", len(unchecked), strings.Join(unchecked, ", "))
	}
	return r, nil
}

// Cache keeps a report for TTL: the status page and the metrics ask often,
// the check reads the relayed addresses of 30 days.
type Cache struct {
	TTL   time.Duration
	Check func(ctx context.Context) (Report, error)

	mu   sync.Mutex
	at   time.Time
	last Report
}

// Report is the cached report, or a fresh one once TTL has passed.
func (c *Cache) Report(ctx context.Context) (Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.TTL {
		return c.last, nil
	}
	r, err := c.Check(ctx)
	if err != nil {
		return r, err
	}
	c.at, c.last = time.Now(), r
	return r, nil
}
