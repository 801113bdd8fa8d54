package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// LoginRecord is what the store knows of one account's successful logins
// over one protocol.
type LoginRecord struct {
	Account  string
	Protocol string
	First    time.Time
	Last     time.Time
	Count    int64
}

// RecordLogin notes a successful login of account over protocol ("imap"
// or "pop3"). Accounts need not exist: in shadow mode nothing else is
// recorded.
func (s *Store) RecordLogin(ctx context.Context, account, protocol string, at time.Time) error {
	account = strings.TrimSpace(account)
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO logins (account, protocol, first_at, last_at, count)
			VALUES (?, ?, ?, ?, 1)
			ON CONFLICT (account, protocol) DO UPDATE SET last_at = excluded.last_at, count = count + 1`,
			account, protocol, at.Unix(), at.Unix())
		return err
	})
	if err != nil {
		return fmt.Errorf("record login %s: %w", account, err)
	}
	return nil
}

// Logins returns every login record, by account then protocol.
func (s *Store) Logins(ctx context.Context) ([]LoginRecord, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT account, protocol, first_at, last_at, count FROM logins ORDER BY account, protocol`)
	if err != nil {
		return nil, fmt.Errorf("logins: %w", err)
	}
	defer rows.Close()
	var out []LoginRecord
	for rows.Next() {
		var r LoginRecord
		var first, last int64
		if err := rows.Scan(&r.Account, &r.Protocol, &first, &last, &r.Count); err != nil {
			return nil, fmt.Errorf("logins: %w", err)
		}
		r.First, r.Last = unixTime(first), unixTime(last)
		out = append(out, r)
	}
	return out, rows.Err()
}
