package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrNotCapturing: a forced cut-over was asked for an account that is not
// being captured.
var ErrNotCapturing = errors.New("the account is not being captured")

// RequestCutover asks the running server to cut an account over now, even
// if its capture has not converged (allowed with Control).
func (s *Store) RequestCutover(ctx context.Context, account string) error {
	acct, err := s.Account(ctx, account)
	if err != nil {
		return err
	}
	if acct.State != StateCapturing {
		return fmt.Errorf("cut-over %s: %w (it is %s)", account, ErrNotCapturing, acct.State)
	}
	return s.writeTx(context.WithValue(ctx, controlKey{}, true), func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE accounts SET cutover_requested = 1 WHERE id = ?", acct.ID)
	})
}

// CutoverRequests returns the accounts whose forced cut-over was asked for.
func (s *Store) CutoverRequests(ctx context.Context) ([]string, error) {
	return queryAll(ctx, s.read, func(row interface{ Scan(...any) error }) (string, error) {
		var name string
		err := row.Scan(&name)
		return name, err
	}, "SELECT name FROM accounts WHERE cutover_requested = 1 ORDER BY id")
}

// ClearCutoverRequest records that a forced cut-over was carried out (or
// found moot).
func (s *Store) ClearCutoverRequest(ctx context.Context, account string) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET cutover_requested = 0 WHERE name = ?", account)
		return err
	})
}

const retiredKey = "legacy_retired_at"

// RetireLegacy records that the legacy server is gone (allowed with
// Control): no follow sync, no password check there any more; the
// credential vault is wiped in the same transaction.
func (s *Store) RetireLegacy(ctx context.Context, at time.Time) error {
	return s.writeTx(context.WithValue(ctx, controlKey{}, true), func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
			retiredKey, strconv.FormatInt(at.Unix(), 10)); err != nil {
			return err
		}
		// The vault has no use any more: wiped with the retirement.
		_, err := tx.ExecContext(ctx, "DELETE FROM credentials")
		return err
	})
}

// LegacyRetired tells whether, and since when, the legacy server is retired.
func (s *Store) LegacyRetired(ctx context.Context) (bool, time.Time, error) {
	var v string
	err := s.read.QueryRowContext(ctx, "SELECT value FROM settings WHERE key = ?", retiredKey).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return false, time.Time{}, nil
	}
	if err != nil {
		return false, time.Time{}, fmt.Errorf("legacy retired: %w", err)
	}
	sec, _ := strconv.ParseInt(v, 10, 64)
	return true, unixTime(sec), nil
}

// SetCredential stores an account's sealed legacy password (the vault).
func (s *Store) SetCredential(ctx context.Context, account string, sealed []byte) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO credentials (account, sealed, updated_at) VALUES (?, ?, ?)
			ON CONFLICT (account) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at`,
			account, sealed, time.Now().Unix())
		return err
	})
}

// Credentials returns every sealed legacy password, by account name.
func (s *Store) Credentials(ctx context.Context) (map[string][]byte, error) {
	rows, err := s.read.QueryContext(ctx, "SELECT account, sealed FROM credentials")
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var name string
		var sealed []byte
		if err := rows.Scan(&name, &sealed); err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
		out[name] = sealed
	}
	return out, rows.Err()
}
