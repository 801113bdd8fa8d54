package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// AddressSeen is an address mail was seen for: relayed to the legacy
// server (RelayedSince), or in the legacy server's delivery trace headers
// of an account's INBOX (TraceAddresses).
type AddressSeen struct {
	Address string
	// AccountID and Account are the account whose INBOX showed the
	// address (trace addresses only).
	AccountID int64
	Account   string
	First     time.Time
	Last      time.Time
	Count     int64
}

// recordRelayed counts mail relayed to the legacy server for each
// address, in the delivery's transaction.
func recordRelayed(ctx context.Context, tx *sql.Tx, to []string, at time.Time) error {
	for _, addr := range to {
		if _, err := tx.ExecContext(ctx, `INSERT INTO relayed_recipients (address, first_at, last_at, count) VALUES (?, ?, ?, 1)
			ON CONFLICT (address) DO UPDATE SET last_at = max(last_at, excluded.last_at), count = count + 1`,
			strings.ToLower(addr), at.Unix(), at.Unix()); err != nil {
			return fmt.Errorf("record relayed recipient: %w", err)
		}
	}
	return nil
}

// RelayedSince lists the addresses mail was relayed to the legacy server
// for since the given time, most recent first.
func (s *Store) RelayedSince(ctx context.Context, since time.Time) ([]AddressSeen, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT address, first_at, last_at, count FROM relayed_recipients
		WHERE last_at >= ? ORDER BY last_at DESC, address`, since.Unix())
	if err != nil {
		return nil, fmt.Errorf("relayed recipients: %w", err)
	}
	defer rows.Close()
	var out []AddressSeen
	for rows.Next() {
		var a AddressSeen
		var first, last int64
		if err := rows.Scan(&a.Address, &first, &last, &a.Count); err != nil {
			return nil, fmt.Errorf("relayed recipients: %w", err)
		}
		a.First, a.Last = unixTime(first), unixTime(last)
		out = append(out, a)
	}
	return out, rows.Err()
}

// traceWindow is how old an INBOX message may be for its trace headers
// to be recorded: older addresses say little about where mail goes now.
const traceWindow = 90 * 24 * time.Hour

// recordTrace counts the trace addresses of one message added to an
// account's INBOX, in the batch's transaction.
func recordTrace(ctx context.Context, tx *sql.Tx, accountID int64, addrs []string, date time.Time) error {
	for _, addr := range addrs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO trace_addresses (account_id, address, first_at, last_at, count) VALUES (?, ?, ?, ?, 1)
			ON CONFLICT (account_id, address) DO UPDATE SET first_at = min(first_at, excluded.first_at),
				last_at = max(last_at, excluded.last_at), count = count + 1`,
			accountID, strings.ToLower(addr), date.Unix(), date.Unix()); err != nil {
			return fmt.Errorf("record trace address: %w", err)
		}
	}
	return nil
}

// TraceAddresses lists the addresses the legacy server's delivery trace
// headers show mail reached each account's INBOX under (messages of the
// last 90 days at their capture), by account and address.
func (s *Store) TraceAddresses(ctx context.Context) ([]AddressSeen, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT t.address, t.account_id, a.name, t.first_at, t.last_at, t.count
		FROM trace_addresses t JOIN accounts a ON a.id = t.account_id ORDER BY a.name, t.address`)
	if err != nil {
		return nil, fmt.Errorf("trace addresses: %w", err)
	}
	defer rows.Close()
	var out []AddressSeen
	for rows.Next() {
		var a AddressSeen
		var first, last int64
		if err := rows.Scan(&a.Address, &a.AccountID, &a.Account, &first, &last, &a.Count); err != nil {
			return nil, fmt.Errorf("trace addresses: %w", err)
		}
		a.First, a.Last = unixTime(first), unixTime(last)
		out = append(out, a)
	}
	return out, rows.Err()
}
