package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SieveScript is one of an account's Sieve scripts.
type SieveScript struct {
	Name   string
	Script []byte
	Active bool
}

// SieveSource says where an account's scripts came from.
type SieveSource string

// The sources.
const (
	// SieveUnknown: no capture looked yet.
	SieveUnknown SieveSource = ""
	// SieveNone: the legacy server offers no ManageSieve; nothing to copy.
	SieveNone SieveSource = "none"
	// SieveCopied: copied from the legacy ManageSieve server.
	SieveCopied SieveSource = "copied"
)

// SieveScripts returns an account's scripts, by name.
func (s *Store) SieveScripts(ctx context.Context, accountID int64) ([]SieveScript, error) {
	rows, err := s.read.QueryContext(ctx, "SELECT name, script, active FROM sieve_scripts WHERE account_id = ? ORDER BY name", accountID)
	if err != nil {
		return nil, fmt.Errorf("sieve scripts: %w", err)
	}
	defer rows.Close()
	var out []SieveScript
	for rows.Next() {
		var sc SieveScript
		if err := rows.Scan(&sc.Name, &sc.Script, &sc.Active); err != nil {
			return nil, fmt.Errorf("sieve scripts: %w", err)
		}
		out = append(out, sc)
	}
	return out, rows.Err()
}

// ActiveSieveScript returns an account's active script, or ErrNotFound
// when none is active.
func (s *Store) ActiveSieveScript(ctx context.Context, accountID int64) (SieveScript, error) {
	sc := SieveScript{Active: true}
	err := s.read.QueryRowContext(ctx, "SELECT name, script FROM sieve_scripts WHERE account_id = ? AND active = 1", accountID).Scan(&sc.Name, &sc.Script)
	if errors.Is(err, sql.ErrNoRows) {
		return sc, ErrNotFound
	}
	if err != nil {
		return sc, fmt.Errorf("active sieve script: %w", err)
	}
	return sc, nil
}

// ReplaceSieveScripts makes an account's scripts exactly these (at most
// one active), with their source, in one transaction: a capture pass
// copies the legacy server's set whole. The commit is not flushed by
// itself (writeTxRelaxed): the cut-over's durable commit comes after it,
// and a set lost to a power loss before that is copied again by the next
// pass.
func (s *Store) ReplaceSieveScripts(ctx context.Context, accountID int64, scripts []SieveScript, source SieveSource) error {
	active := 0
	for _, sc := range scripts {
		if sc.Active {
			active++
		}
	}
	if active > 1 {
		return fmt.Errorf("replace sieve scripts: %d active, at most one may be", active)
	}
	now := time.Now().Unix()
	err := s.writeTxRelaxed(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DELETE FROM sieve_scripts WHERE account_id = ?", accountID); err != nil {
			return err
		}
		for _, sc := range scripts {
			if _, err := tx.ExecContext(ctx, "INSERT INTO sieve_scripts (account_id, name, script, active, updated_at) VALUES (?, ?, ?, ?, ?)",
				accountID, sc.Name, sc.Script, sc.Active, now); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET sieve_source = ? WHERE id = ?", source, accountID)
		return err
	})
	if err != nil {
		return fmt.Errorf("replace sieve scripts: %w", err)
	}
	return nil
}

// SieveState returns where an account's scripts came from and the last
// error of its active script ("" when it last ran fine).
func (s *Store) SieveState(ctx context.Context, accountID int64) (SieveSource, string, error) {
	var src SieveSource
	var lastErr string
	err := s.read.QueryRowContext(ctx, "SELECT sieve_source, sieve_error FROM accounts WHERE id = ?", accountID).Scan(&src, &lastErr)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", ErrNotFound
	}
	if err != nil {
		return "", "", fmt.Errorf("sieve state: %w", err)
	}
	return src, lastErr, nil
}

// SetSieveError records the last error of an account's active script
// ("" clears it).
func (s *Store) SetSieveError(ctx context.Context, accountID int64, msg string) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET sieve_error = ? WHERE id = ? AND sieve_error != ?", msg, accountID, msg)
		return err
	})
	if err != nil {
		return fmt.Errorf("set sieve error: %w", err)
	}
	return nil
}

// VacationAnswered tells whether the account's vacation reply under
// handle answered sender after since (RFC 5230 4.2: one reply per sender
// per period, remembered across restarts).
func (s *Store) VacationAnswered(ctx context.Context, accountID int64, handle, sender string, since time.Time) (bool, error) {
	var n int
	err := s.read.QueryRowContext(ctx, "SELECT count(*) FROM sieve_vacation WHERE account_id = ? AND handle = ? AND sender = ? AND sent_at > ?",
		accountID, handle, sender, since.Unix()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("vacation answered: %w", err)
	}
	return n > 0, nil
}

// RecordVacation remembers that the reply under handle answered sender
// at at.
func (s *Store) RecordVacation(ctx context.Context, accountID int64, handle, sender string, at time.Time) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sieve_vacation (account_id, handle, sender, sent_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (account_id, handle, sender) DO UPDATE SET sent_at = excluded.sent_at`, accountID, handle, sender, at.Unix())
		return err
	})
	if err != nil {
		return fmt.Errorf("record vacation: %w", err)
	}
	return nil
}

// PutSieveScript stores a script under name, replacing one of that name
// (which keeps its active mark).
func (s *Store) PutSieveScript(ctx context.Context, accountID int64, name string, script []byte) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sieve_scripts (account_id, name, script, active, updated_at) VALUES (?, ?, ?, 0, ?)
			ON CONFLICT (account_id, name) DO UPDATE SET script = excluded.script, updated_at = excluded.updated_at`,
			accountID, name, script, time.Now().Unix())
		return err
	})
	if err != nil {
		return fmt.Errorf("put sieve script %q: %w", name, err)
	}
	return nil
}

// SetActiveSieveScript makes name the active script ("" deactivates
// every script); ErrNotFound if there is no such script.
func (s *Store) SetActiveSieveScript(ctx context.Context, accountID int64, name string) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if name != "" {
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sieve_scripts WHERE account_id = ? AND name = ?", accountID, name).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return ErrNotFound
			}
		}
		_, err := tx.ExecContext(ctx, "UPDATE sieve_scripts SET active = (name = ?) WHERE account_id = ?", name, accountID)
		return err
	})
	if err != nil {
		return fmt.Errorf("set active sieve script %q: %w", name, err)
	}
	return nil
}

// DeleteSieveScript removes a script; ErrNotFound if there is none,
// ErrSieveActive if it is the active one.
func (s *Store) DeleteSieveScript(ctx context.Context, accountID int64, name string) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var active bool
		err := tx.QueryRowContext(ctx, "SELECT active FROM sieve_scripts WHERE account_id = ? AND name = ?", accountID, name).Scan(&active)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case active:
			return ErrSieveActive
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM sieve_scripts WHERE account_id = ? AND name = ?", accountID, name)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete sieve script %q: %w", name, err)
	}
	return nil
}

// RenameSieveScript renames a script (it stays active if it was);
// ErrNotFound if there is none, ErrExists if the new name is taken.
func (s *Store) RenameSieveScript(ctx context.Context, accountID int64, from, to string) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sieve_scripts WHERE account_id = ? AND name = ?", accountID, to).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return ErrExists
		}
		res, err := tx.ExecContext(ctx, "UPDATE sieve_scripts SET name = ?, updated_at = ? WHERE account_id = ? AND name = ?", to, time.Now().Unix(), accountID, from)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rename sieve script %q: %w", from, err)
	}
	return nil
}

// ErrSieveActive: the active script cannot be deleted.
var ErrSieveActive = errors.New("the script is active")
