package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"mailcapture/addresses"
	"mailcapture/store"
)

const addressesUsage = "--config FILE (list | check ADDRESS | suggest) [--json]"

func runAddresses(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "addresses", addressesUsage,
		"show the alias table (list), how an address resolves and where its mail goes now (check), or the addresses the legacy server's delivery headers show that the table lacks (suggest)")
	path := configFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, st, rest, err := openWithConfig(ctx, env, fs, path, args, false)
	if err != nil {
		return err
	}
	defer st.Close()
	dir, err := directoryOf(cfg, st)
	if err != nil {
		return err
	}
	switch {
	case len(rest) == 1 && rest[0] == "list":
		return listAddresses(env, dir, *asJSON)
	case len(rest) == 2 && rest[0] == "check":
		return checkAddress(ctx, env, st, dir, rest[1], cfg.Outbound.Relay.Address != "", *asJSON)
	case len(rest) == 1 && rest[0] == "suggest":
		return suggestAddresses(ctx, env, st, dir, *asJSON)
	}
	return usageError("addresses: say list, check ADDRESS, or suggest")
}

func listAddresses(env *environment, dir *addresses.Directory, asJSON bool) error {
	entries := dir.Table().Entries()
	if asJSON {
		if entries == nil {
			entries = []addresses.Entry{}
		}
		return writeJSON(env, entries)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tTARGETS\tLINE")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", e.Pattern, strings.Join(e.Targets, ", "), e.Line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d aliases\n", len(entries))
	return nil
}

// addressCheck is `mailcapture addresses check`.
type addressCheck struct {
	Address string         `json:"address"`
	Hosted  bool           `json:"hosted"`
	Via     string         `json:"via,omitempty"`
	Targets []targetReport `json:"targets"`
	// ReachedBy are the aliases whose targets include the address.
	ReachedBy []string `json:"reached_by,omitempty"`
	Retired   bool     `json:"legacy_retired"`
}

type targetReport struct {
	Address string          `json:"address"`
	Account string          `json:"account,omitempty"`
	State   store.State     `json:"state,omitempty"`
	Route   addresses.Route `json:"route"`
}

func checkAddress(ctx context.Context, env *environment, st *store.Store, dir *addresses.Directory, addr string, outbound, asJSON bool) error {
	retired, _, err := st.LegacyRetired(ctx)
	if err != nil {
		return err
	}
	c := addressCheck{Address: addr, Hosted: dir.Hosted(addr), Retired: retired, Targets: []targetReport{}}
	if c.Hosted {
		res, err := dir.Resolve(ctx, addr)
		if err != nil {
			return err
		}
		c.Via = res.Via
		for _, t := range res.Targets {
			r := targetReport{Address: t.Address, Route: t.Route(retired, outbound)}
			if t.Found {
				r.Account, r.State = t.Account.Name, t.Account.State
			}
			c.Targets = append(c.Targets, r)
		}
		c.ReachedBy = dir.Table().Targets(addr)
	}
	if asJSON {
		return writeJSON(env, c)
	}
	w := env.stdout
	if !c.Hosted {
		fmt.Fprintf(w, "%s: not in one of the domains (%s): refused with 554\n", addr, strings.Join(dir.Domains, ", "))
		return nil
	}
	fmt.Fprintf(w, "%s resolves by %s to:\n", addr, c.Via)
	for _, t := range c.Targets {
		account := "an account mailcapture does not know"
		if t.Account != "" {
			account = fmt.Sprintf("account %s (%s)", t.Account, t.State)
		}
		fmt.Fprintf(w, "  %s: %s, %s\n", t.Address, account, describeRoute(t.Route))
	}
	if len(c.ReachedBy) > 0 {
		fmt.Fprintf(w, "aliases that reach it: %s\n", strings.Join(c.ReachedBy, ", "))
	}
	return nil
}

func describeRoute(r addresses.Route) string {
	switch r {
	case addresses.RouteLocal:
		return "delivered here (local)"
	case addresses.RouteHold:
		return "held until its cut-over ends"
	case addresses.RouteLegacy:
		return "relayed to the legacy server"
	case addresses.RouteOutbound:
		return "sent out by the outbound relay"
	}
	return "refused: no mailbox here since the legacy server's retirement"
}

// suggestion is an address the legacy server delivered into an account's
// INBOX that does not reach that account here.
type suggestion struct {
	Address  string    `json:"address"`
	Account  string    `json:"account"`
	Messages int64     `json:"messages"`
	Last     time.Time `json:"last"`
}

func suggestAddresses(ctx context.Context, env *environment, st *store.Store, dir *addresses.Directory, asJSON bool) error {
	seen, err := st.TraceAddresses(ctx)
	if err != nil {
		return err
	}
	out := []suggestion{}
	for _, s := range seen {
		if !dir.Hosted(s.Address) {
			continue
		}
		res, err := dir.Resolve(ctx, s.Address)
		if err != nil {
			return err
		}
		reaches := false
		for _, t := range res.Targets {
			reaches = reaches || t.Found && t.Account.ID == s.AccountID
		}
		if !reaches {
			out = append(out, suggestion{Address: s.Address, Account: s.Account, Messages: s.Count, Last: s.Last})
		}
	}
	if asJSON {
		return writeJSON(env, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(env.stdout, "# every address the legacy server's delivery headers show reaches its mailbox here")
		return nil
	}
	fmt.Fprintf(env.stdout, "# %d addresses reached a mailbox at the legacy server under a name that does not reach it here.\n", len(out))
	fmt.Fprintln(env.stdout, "# Check each, then append the lines you want to addresses.file:")
	for _, s := range out {
		fmt.Fprintf(env.stdout, "# %d messages in %s's INBOX, the last dated %s\n%s\t%s\n", s.Messages, s.Account, s.Last.Format("2006-01-02"), s.Address, s.Account)
	}
	return nil
}
