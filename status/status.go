// Package status gathers the migration's progress from the store into one
// report, shared by `mailcapture status`, the HTTP status endpoint and the
// metrics.
package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"mailcapture/labels"
	"mailcapture/retirement"
	"mailcapture/store"
)

// Report is the migration's progress at one instant.
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Accounts counts accounts per state (unknown accounts have no row and
	// are not counted).
	Accounts map[store.State]int64 `json:"accounts"`
	// Stored is what the local store holds; Legacy what the legacy
	// mailboxes of the known accounts held when last measured.
	Stored Progress `json:"stored"`
	Legacy Progress `json:"legacy"`
	// Spool is the relay queue.
	Spool Spool `json:"spool"`
	// AccountList is per account detail (never exported as metrics).
	AccountList []Account `json:"account_list,omitempty"`
	// Problems are the latest warnings and errors logged, newest first
	// (serve's status page only).
	Problems []Problem `json:"problems,omitempty"`
	// Retirement says whether the legacy server is retired and, until it
	// is, what would break without it (when Options.Retirement is set).
	Retirement *Retirement `json:"retirement,omitempty"`
	// Submissions counts what users sent through listen.submission(s)
	// since serve started (serve's status page only).
	Submissions *Submissions `json:"submissions,omitempty"`
}

// Submissions counts users' submissions since serve started.
type Submissions struct {
	// Accepted, Rejected and Deferred count messages by route (a message
	// with recipients on several routes counts on each).
	Accepted map[labels.SubmissionRoute]int64 `json:"accepted"`
	Rejected map[labels.SubmissionRoute]int64 `json:"rejected"`
	Deferred map[labels.SubmissionRoute]int64 `json:"deferred"`
	// Logins counts submission logins by result.
	Logins map[labels.LoginResult]int64 `json:"logins"`
	// RateLimited and SenderRefused count refusals by the hourly
	// allowance and by the sender policy.
	RateLimited   int64 `json:"rate_limited"`
	SenderRefused int64 `json:"sender_refused"`
}

// Retirement is the legacy server's retirement as the report shows it.
type Retirement struct {
	Retired bool      `json:"retired"`
	Since   time.Time `json:"since,omitzero"`
	// Blockers say what would break, one sentence each; Counts how many
	// of each kind.
	Blockers []string                           `json:"blockers"`
	Counts   map[labels.RetirementBlocker]int64 `json:"counts"`
	// Note says what the check could not look into.
	Note string `json:"note,omitempty"`
}

// Progress counts messages and bytes.
type Progress struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
}

// Spool describes the relay queue.
type Spool struct {
	Messages         int64   `json:"messages"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// Retrying counts messages whose delivery to the legacy server failed
	// at least once; LastError is the latest such failure.
	Retrying  int64  `json:"retrying"`
	LastError string `json:"last_error,omitempty"`
}

// Account is one account's line of the report.
type Account struct {
	Name           string      `json:"name"`
	State          store.State `json:"state"`
	StoredMessages int64       `json:"stored_messages"`
	StoredBytes    int64       `json:"stored_bytes"`
	LegacyMessages int64       `json:"legacy_messages"`
	LegacyBytes    int64       `json:"legacy_bytes"`
	LastSync       time.Time   `json:"last_sync,omitzero"`
	LastError      string      `json:"last_error,omitempty"`
	// SameMailboxAs lists the other accounts whose names name the same
	// mailbox (filled by `mailcapture accounts list`).
	SameMailboxAs []string `json:"same_mailbox_as,omitempty"`
}

// Options selects what Collect gathers.
type Options struct {
	// PerAccount adds one line per account.
	PerAccount bool
	// Retirement, if set, adds what would break without the legacy
	// server (retirement.Cache.Report).
	Retirement func(ctx context.Context) (retirement.Report, error)
}

// Collect reads the report from the store.
func Collect(ctx context.Context, st *store.Store, opts Options) (Report, error) {
	r := Report{GeneratedAt: time.Now().UTC()}
	var err error
	if r.Accounts, err = st.StateCounts(ctx); err != nil {
		return r, fmt.Errorf("status: %w", err)
	}
	stored, legacy, err := st.TotalProgress(ctx)
	if err != nil {
		return r, fmt.Errorf("status: %w", err)
	}
	r.Stored = Progress{Messages: stored.Messages, Bytes: stored.Bytes}
	r.Legacy = Progress{Messages: legacy.Messages, Bytes: legacy.Bytes}
	n, oldest, err := st.SpoolStats(ctx)
	if err != nil {
		return r, fmt.Errorf("status: %w", err)
	}
	r.Spool.Messages = n
	if r.Spool.Retrying, r.Spool.LastError, err = st.SpoolRetries(ctx); err != nil {
		return r, fmt.Errorf("status: %w", err)
	}
	if !oldest.IsZero() {
		r.Spool.OldestAgeSeconds = r.GeneratedAt.Sub(oldest).Seconds()
	}
	if opts.Retirement != nil {
		if r.Retirement, err = retirementOf(ctx, st, opts.Retirement); err != nil {
			return r, fmt.Errorf("status: %w", err)
		}
	}
	if !opts.PerAccount {
		return r, nil
	}
	accounts, err := st.Accounts(ctx)
	if err != nil {
		return r, fmt.Errorf("status: %w", err)
	}
	for _, a := range accounts {
		p, err := st.AccountProgress(ctx, a.ID)
		if err != nil {
			return r, fmt.Errorf("status: %w", err)
		}
		r.AccountList = append(r.AccountList, Account{
			Name: a.Name, State: a.State, StoredMessages: p.Messages, StoredBytes: p.Bytes,
			LegacyMessages: a.LegacyMessages, LegacyBytes: a.LegacyBytes, LastSync: a.LastSyncAt, LastError: a.LastError,
		})
	}
	return r, nil
}

func retirementOf(ctx context.Context, st *store.Store, check func(context.Context) (retirement.Report, error)) (*Retirement, error) {
	retired, since, err := st.LegacyRetired(ctx)
	if err != nil {
		return nil, err
	}
	out := &Retirement{Retired: retired, Since: since, Blockers: []string{}, Counts: map[labels.RetirementBlocker]int64{}}
	for _, k := range labels.RetirementBlockers {
		out.Counts[k] = 0
	}
	if retired {
		return out, nil
	}
	rep, err := check(ctx)
	if err != nil {
		return nil, err
	}
	out.Blockers, out.Counts, out.Note = rep.Sentences(), rep.Counts(), rep.LegacyNote
	if out.Blockers == nil {
		out.Blockers = []string{}
	}
	return out, nil
}

// Remaining is what is still to copy, as far as the legacy sizes are known.
func (r Report) Remaining() Progress {
	return Progress{Messages: max(r.Legacy.Messages-r.Stored.Messages, 0), Bytes: max(r.Legacy.Bytes-r.Stored.Bytes, 0)}
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a terminal; bars draws progress bars.
func (r Report) WriteText(w io.Writer, bars bool) error {
	var b strings.Builder
	total := r.Accounts[store.StateCapturing] + r.Accounts[store.StateCutover] + r.Accounts[store.StateCaptured]
	fmt.Fprintf(&b, "accounts: %d known (%d captured, %d in cut-over, %d capturing)\n",
		total, r.Accounts[store.StateCaptured], r.Accounts[store.StateCutover], r.Accounts[store.StateCapturing])
	fmt.Fprintf(&b, "messages: %d of %d copied%s\n", r.Stored.Messages, r.Legacy.Messages, percent(r.Stored.Messages, r.Legacy.Messages, bars))
	fmt.Fprintf(&b, "bytes:    %s of %s copied%s\n", humanBytes(r.Stored.Bytes), humanBytes(r.Legacy.Bytes), percent(r.Stored.Bytes, r.Legacy.Bytes, bars))
	fmt.Fprintf(&b, "relay queue: %d messages", r.Spool.Messages)
	if r.Spool.Messages > 0 {
		fmt.Fprintf(&b, ", oldest %s", (time.Duration(r.Spool.OldestAgeSeconds) * time.Second).String())
	}
	if r.Spool.Retrying > 0 {
		fmt.Fprintf(&b, ", %d being retried (last error: %s)", r.Spool.Retrying, r.Spool.LastError)
	}
	b.WriteString("\n")
	if len(r.AccountList) > 0 {
		fmt.Fprintf(&b, "\n%-40s %-10s %21s %s\n", "ACCOUNT", "STATE", "MESSAGES", "LAST ERROR")
		for _, a := range r.AccountList {
			fmt.Fprintf(&b, "%-40s %-10s %10d/%-10d %s\n", a.Name, a.State, a.StoredMessages, a.LegacyMessages, a.LastError)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func percent(done, total int64, bar bool) string {
	if total <= 0 {
		return ""
	}
	p := min(float64(done)/float64(total), 1)
	s := fmt.Sprintf(" (%.1f%%)", p*100)
	if bar {
		const width = 30
		filled := int(p * width)
		s = " [" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "]" + s
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
