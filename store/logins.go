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

// Login is one successful login to record.
type Login struct {
	Account  string
	Protocol string // "imap" or "pop3"
	At       time.Time
}

// RecordLogins notes successful logins, in one transaction. Accounts need
// not exist: in shadow mode nothing else is recorded.
func (s *Store) RecordLogins(ctx context.Context, logins []Login) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		for _, l := range logins {
			_, err := tx.ExecContext(ctx, `INSERT INTO logins (account, protocol, first_at, last_at, count)
				VALUES (?, ?, ?, ?, 1)
				ON CONFLICT (account, protocol) DO UPDATE SET last_at = excluded.last_at, count = count + 1`,
				strings.TrimSpace(l.Account), l.Protocol, l.At.Unix(), l.At.Unix())
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record %d logins: %w", len(logins), err)
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
