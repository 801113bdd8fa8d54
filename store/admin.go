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
// Control): no follow sync, no password check there any more.
func (s *Store) RetireLegacy(ctx context.Context, at time.Time) error {
	return s.writeTx(context.WithValue(ctx, controlKey{}, true), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
			retiredKey, strconv.FormatInt(at.Unix(), 10))
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
