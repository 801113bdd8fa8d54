package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"mailcapture/store"
)

// queueUsage is the queue command's synopsis.
const queueUsage = "--config FILE (list [--json] | retry (ID... | --all) | drop ID... [--yes])"

func runQueue(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "queue", queueUsage,
		"list the relay spool; retry messages now; drop messages (asks for confirmation unless --yes). Works while serve runs: retries and drops are carried out by its relay queue within seconds")
	path := configFlags(fs)
	asJSON := fs.Bool("json", false, "list: print JSON")
	all := fs.Bool("all", false, "retry: every message waiting for the legacy server")
	yes := fs.Bool("yes", false, "drop: do not ask for confirmation")
	// Control allows reading and the two spool requests, beside serve.
	st, rest, err := openForCommand(ctx, env, fs, path, args, true)
	if err != nil {
		return err
	}
	defer st.Close()
	if len(rest) == 0 {
		return usageError("queue: say list, retry or drop")
	}
	action, rest := rest[0], rest[1:]
	var ids []int64
	for _, a := range rest {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return usageError(fmt.Sprintf("queue %s: %q is not a message id (see `mailcapture queue list`)", action, a))
		}
		ids = append(ids, id)
	}
	switch action {
	case "list":
		if len(ids) > 0 {
			return usageError("queue list takes no ids")
		}
	case "retry":
		if (len(ids) == 0) == !*all {
			return usageError("queue retry: give message ids or --all, not both")
		}
	case "drop":
		if len(ids) == 0 {
			return usageError("queue drop: give the ids of the messages to drop")
		}
	default:
		return usageError(fmt.Sprintf("queue: unknown action %q: say list, retry or drop", action))
	}
	entries, err := st.Spooled(ctx)
	if err != nil {
		return err
	}
	switch action {
	case "list":
		return listQueue(env, entries, *asJSON)
	case "retry":
		n, err := st.RequestRetry(ctx, ids)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%d messages due now; serve's relay queue retries them within seconds\n", n)
		return missing(ids, n)
	}
	byID := map[int64]store.SpoolEntry{}
	for _, e := range entries {
		byID[e.ID] = e
	}
	for _, id := range ids {
		e, ok := byID[id]
		switch {
		case !ok:
			return fmt.Errorf("queue drop: no spooled message %d", id)
		case e.Route == store.RouteHold:
			return fmt.Errorf("queue drop: message %d is held for an account in cut-over; it is delivered when the cut-over ends", id)
		}
	}
	if ok, err := confirm(env, *yes, fmt.Sprintf("Drop %d messages for good (their senders are not told)?", len(ids))); err != nil || !ok {
		return err
	}
	n, err := st.RequestDrop(ctx, ids)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d messages marked; serve's relay queue removes them within seconds (or at its next start)\n", n)
	return missing(ids, n)
}

func missing(ids []int64, changed int64) error {
	if len(ids) > 0 && changed < int64(len(ids)) {
		return fmt.Errorf("%d of the %d ids are not waiting for the legacy server", int64(len(ids))-changed, len(ids))
	}
	return nil
}

// queueRow is one spooled message in `mailcapture queue list --json`.
type queueRow struct {
	ID          int64     `json:"id"`
	Route       string    `json:"route"`
	From        string    `json:"from"`
	To          []string  `json:"to"`
	Size        int64     `json:"size"`
	MessageID   string    `json:"message_id"`
	ReceivedAt  time.Time `json:"received_at"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt_at"`
	LastError   string    `json:"last_error"`
	Dropping    bool      `json:"dropping"`
}

func listQueue(env *environment, entries []store.SpoolEntry, asJSON bool) error {
	if asJSON {
		rows := []queueRow{}
		for _, e := range entries {
			rows = append(rows, queueRow{ID: e.ID, Route: string(e.Route), From: e.From, To: e.To, Size: e.Size, MessageID: e.MessageID,
				ReceivedAt: e.ReceivedAt, Attempts: e.Attempts, NextAttempt: e.NextAttemptAt, LastError: e.LastError, Dropping: e.DropRequested})
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROUTE\tAGE\tSIZE\tATTEMPTS\tFROM\tTO\tLAST ERROR")
	for _, e := range entries {
		route := string(e.Route)
		if e.DropRequested {
			route += " (dropping)"
		}
		from := e.From
		if from == "" {
			from = "<>"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", e.ID, route, time.Since(e.ReceivedAt).Truncate(time.Second), e.Size, e.Attempts,
			from, strings.Join(e.To, ","), e.LastError)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d messages spooled\n", len(entries))
	return nil
}
