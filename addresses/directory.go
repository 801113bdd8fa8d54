package addresses

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"mailcapture/store"
)

// Directory answers where an address's mail goes: the naming rules, the
// alias table in force (replaced whole at a reload, never changed in
// place) and the accounts of the store.
type Directory struct {
	Naming  Naming
	Domains []string
	Store   *store.Store
	table   atomic.Pointer[Table]
}

// SetTable puts t in force.
func (d *Directory) SetTable(t *Table) { d.table.Store(t) }

// Table is the alias table in force (never nil).
func (d *Directory) Table() *Table {
	if t := d.table.Load(); t != nil {
		return t
	}
	return Empty()
}

// Hosted tells whether addr is in one of the domains.
func (d *Directory) Hosted(addr string) bool {
	domain := Domain(addr)
	for _, h := range d.Domains {
		if strings.EqualFold(h, domain) {
			return true
		}
	}
	return false
}

// Target is one address a recipient's mail goes to.
type Target struct {
	// Address is the final address: the recipient as given when no alias
	// applies (its extension kept), else a target of the alias table. It is
	// what the legacy server is sent.
	Address string
	// Account is the account Address is for (the address without its
	// extension); Found tells whether mailcapture knows it.
	Account store.Account
	Found   bool
	// Hosted is false for a target outside the domains (an alias that
	// forwards elsewhere).
	Hosted bool
}

// Resolution is what a recipient resolves to.
type Resolution struct {
	Targets []Target
	// Via says how (see Expansion.Via).
	Via string
}

// Resolve resolves a recipient: through the alias table (Table.Expand),
// then each final address to its account. A loop in the table, or a
// store that cannot be read, is an error.
func (d *Directory) Resolve(ctx context.Context, rcpt string) (Resolution, error) {
	var lookupErr error
	known := func(base string) bool {
		_, found, err := d.AccountOf(ctx, base)
		if err != nil {
			lookupErr = err
		}
		return found
	}
	x, err := d.Table().Expand(d.Naming, rcpt, known)
	if err != nil {
		return Resolution{}, err
	}
	if lookupErr != nil {
		return Resolution{}, lookupErr
	}
	res := Resolution{Via: x.Via, Targets: make([]Target, 0, len(x.Finals))}
	for _, addr := range x.Finals {
		t := Target{Address: addr, Hosted: d.Hosted(addr)}
		if t.Hosted {
			acct, found, err := d.AccountOf(ctx, addr)
			if err != nil {
				return Resolution{}, err
			}
			t.Account, t.Found = acct, found
		}
		res.Targets = append(res.Targets, t)
	}
	return res, nil
}

// AccountOf is the account an address is for, aliases aside: the address
// without its extension, in canonical form. found is false for an
// account mailcapture does not know.
func (d *Directory) AccountOf(ctx context.Context, addr string) (acct store.Account, found bool, err error) {
	name, err := d.Naming.Account(d.Naming.Base(addr))
	if err != nil {
		return store.Account{}, false, nil
	}
	acct, err = d.Store.Account(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Account{}, false, nil
	case err != nil:
		return store.Account{}, false, fmt.Errorf("look up %s: %w", name, err)
	}
	return acct, true, nil
}

// Load reads the alias table in path and puts it in force. On error the
// table in force stays (an admin's typo must not drop every alias); the
// warnings are lines Postfix accepts and mailcapture does not use.
func (d *Directory) Load(path string) (entries int, warnings []LineError, err error) {
	t, warnings, err := LoadFile(path, d.Naming.DefaultDomain)
	if err != nil {
		return 0, warnings, err
	}
	d.SetTable(t)
	return t.Len(), warnings, nil
}

// Watch reloads the alias table in path whenever the file changes (its
// size or modification time), checking every interval, until ctx ends;
// reloads also come from reload (SIGHUP). Each reload is logged; a
// table refused is an error, and the one in force stays.
func (d *Directory) Watch(ctx context.Context, path string, interval time.Duration, reload <-chan struct{}, log *slog.Logger) {
	last := stamp(path)
	for {
		trigger := "signal"
		select {
		case <-ctx.Done():
			return
		case <-reload:
		case <-time.After(interval):
			if now := stamp(path); now == last {
				continue
			}
			trigger = "change"
		}
		last = stamp(path)
		n, warnings, err := d.Load(path)
		for _, w := range warnings {
			log.Warn("addresses.file: a line was ignored", "file", path, "line", w.Line, "problem", w.Msg)
		}
		if err != nil {
			log.Error("addresses.file was refused; the alias table in force stays", "file", path, "err", err)
			continue
		}
		log.Info("alias table reloaded", "file", path, "entries", n, "trigger", trigger)
	}
}

// stamp identifies a version of a file: size and modification time.
func stamp(path string) [2]int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return [2]int64{-1, -1}
	}
	return [2]int64{fi.Size(), fi.ModTime().UnixNano()}
}

// Route is where a target's copy of a message goes.
type Route string

// The routes.
const (
	// RouteLocal: the account is captured; delivered into its INBOX.
	RouteLocal Route = "local"
	// RouteHold: the account is in cut-over; held until it ends.
	RouteHold Route = "held"
	// RouteLegacy: relayed to the legacy server (accounts not captured,
	// addresses mailcapture does not know, forwards outside the domains).
	RouteLegacy Route = "legacy"
	// RouteOutbound: a forward outside the domains once the legacy
	// server is retired, sent by the outbound relay.
	RouteOutbound Route = "outbound"
	// RouteNone: nowhere (the legacy server is retired and the target
	// reaches no captured account, nor, without an outbound relay, the
	// outside world).
	RouteNone Route = "none"
)

// Route is where mail for the target goes now: the route of its
// account's state; once the legacy server is retired, only captured
// accounts take mail, and forwards outside the domains need an outbound
// relay (outbound says there is one).
func (t Target) Route(retired, outbound bool) Route {
	switch {
	case t.Found && t.Account.State == store.StateCaptured:
		return RouteLocal
	case t.Found && t.Account.State == store.StateCutover:
		return RouteHold
	case retired && !t.Hosted && outbound:
		return RouteOutbound
	case retired:
		return RouteNone
	}
	return RouteLegacy
}
