package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State is an account's place in the migration (docs/CONTRACT.md, "Account
// states"). An account that has no row is unknown.
type State string

// The account states with a row in the store.
const (
	StateCapturing State = "capturing"
	StateCutover   State = "cutover"
	StateCaptured  State = "captured"
)

// Account is one mailbox owner.
type Account struct {
	ID             int64
	Name           string
	State          State
	StateChangedAt time.Time
	CreatedAt      time.Time
	// LegacyPrefix and LegacySeparator are the legacy server's personal
	// namespace prefix and hierarchy separator, served unchanged.
	LegacyPrefix    string
	LegacySeparator string
	// SpecialUseGuessed is true when special-use attributes were guessed
	// from folder names because the legacy server announced none.
	SpecialUseGuessed bool
	// LegacyMessages and LegacyBytes are the size of the legacy mailbox as
	// last measured by the capture engine.
	LegacyMessages   int64
	LegacyBytes      int64
	CaptureStartedAt time.Time
	LastSyncAt       time.Time
	CapturedAt       time.Time
	LastError        string
	// LegacyLogin is the name the legacy server last accepted for the
	// account ("" until a login there succeeded): captures log in with it.
	LegacyLogin string
	// HasPassword tells whether a password hash is stored (an account
	// captured with a master user has none until its user logs in).
	HasPassword bool
}

// Progress is how much of an account (or of all accounts) is stored.
type Progress struct {
	Messages int64
	Bytes    int64
}

const accountColumns = `id, name, state, state_changed_at, created_at, legacy_prefix, legacy_separator,
	special_use_guessed, legacy_messages, legacy_bytes, capture_started_at, last_sync_at, captured_at, last_error, legacy_login,
	password_hash != ''`

func scanAccount(row interface{ Scan(...any) error }) (Account, error) {
	var a Account
	var changed, created, started, synced, captured int64
	err := row.Scan(&a.ID, &a.Name, &a.State, &changed, &created, &a.LegacyPrefix, &a.LegacySeparator,
		&a.SpecialUseGuessed, &a.LegacyMessages, &a.LegacyBytes, &started, &synced, &captured, &a.LastError, &a.LegacyLogin, &a.HasPassword)
	if err != nil {
		return Account{}, err
	}
	a.StateChangedAt, a.CreatedAt = unixTime(changed), unixTime(created)
	a.CaptureStartedAt, a.LastSyncAt, a.CapturedAt = unixTime(started), unixTime(synced), unixTime(captured)
	return a, nil
}

func unixTime(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// CreateAccount records a new account in state with the password's hash.
// An empty password stores no hash at all (an account captured with a
// master user): then no password verifies until SetPassword. It fails with
// ErrExists if the name is taken.
func (s *Store) CreateAccount(ctx context.Context, name, password string, state State) (Account, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return Account{}, fmt.Errorf("create account: empty name")
	}
	hash := ""
	if password != "" {
		var err error
		if hash, err = s.hash(ctx, password); err != nil {
			return Account{}, fmt.Errorf("create account %s: %w", name, err)
		}
	}
	now := time.Now().Unix()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO accounts (name, password_hash, state, state_changed_at, created_at, capture_started_at)
			VALUES (?, ?, ?, ?, ?, ?)`,
			name, hash, state, now, now, now)
		if isUniqueViolation(err) {
			return ErrExists
		}
		return err
	})
	if err != nil {
		return Account{}, fmt.Errorf("create account %s: %w", name, err)
	}
	return s.Account(ctx, name)
}

// EnsureAccounts records, in one transaction, each of names that is not
// an account yet, in state and without a password hash (as CreateAccount
// with an empty password), and returns the accounts of all the names, in
// their order: a bulk capture records hundreds of accounts with one
// commit.
func (s *Store) EnsureAccounts(ctx context.Context, names []string, state State) ([]Account, error) {
	now := time.Now().Unix()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO accounts (name, password_hash, state, state_changed_at, created_at, capture_started_at)
			VALUES (?, '', ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for _, name := range names {
			name = strings.TrimSpace(name)
			if name == "" {
				return fmt.Errorf("empty name")
			}
			if _, err := ins.ExecContext(ctx, name, state, now, now, now); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create accounts: %w", err)
	}
	out := make([]Account, 0, len(names))
	for _, name := range names {
		a, err := s.Account(ctx, strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// Account returns the account called name (case-insensitive), or
// ErrNotFound.
func (s *Store) Account(ctx context.Context, name string) (Account, error) {
	a, err := scanAccount(s.read.QueryRowContext(ctx, "SELECT "+accountColumns+" FROM accounts WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return Account{}, fmt.Errorf("account %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Account{}, fmt.Errorf("account %s: %w", name, err)
	}
	return a, nil
}

// AccountByID returns the account with the id.
func (s *Store) AccountByID(ctx context.Context, id int64) (Account, error) {
	a, err := scanAccount(s.read.QueryRowContext(ctx, "SELECT "+accountColumns+" FROM accounts WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Account{}, fmt.Errorf("account %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Account{}, fmt.Errorf("account %d: %w", id, err)
	}
	return a, nil
}

// Accounts lists every account, by name.
func (s *Store) Accounts(ctx context.Context) ([]Account, error) {
	out, err := queryAll(ctx, s.read, scanAccount, "SELECT "+accountColumns+" FROM accounts ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	return out, nil
}

// StateCounts returns how many accounts are in each state.
func (s *Store) StateCounts(ctx context.Context) (map[State]int64, error) {
	rows, err := s.read.QueryContext(ctx, "SELECT state, count(*) FROM accounts GROUP BY state")
	if err != nil {
		return nil, fmt.Errorf("count accounts: %w", err)
	}
	defer rows.Close()
	out := map[State]int64{StateCapturing: 0, StateCutover: 0, StateCaptured: 0}
	for rows.Next() {
		var st State
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count accounts: %w", err)
		}
		out[st] = n
	}
	return out, rows.Err()
}

// VerifyPassword reports whether password matches the account's stored
// hash. An unknown account verifies nothing (ErrNotFound).
func (s *Store) VerifyPassword(ctx context.Context, name, password string) (bool, error) {
	var hash string
	err := s.read.QueryRowContext(ctx, "SELECT password_hash FROM accounts WHERE name = ?", name).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("account %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("account %s: %w", name, err)
	}
	if err := s.acquireHashing(ctx); err != nil {
		return false, fmt.Errorf("account %s: %w", name, err)
	}
	defer func() { <-s.hashing }()
	return CheckPassword(hash, password), nil
}

// acquireHashing waits for a turn to compute a password hash.
func (s *Store) acquireHashing(ctx context.Context) error {
	select {
	case s.hashing <- struct{}{}:
		s.hashes.Add(1)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting to check a password: %w", ctx.Err())
	}
}

// PasswordHashes returns how many password hashes this Store has
// computed or checked since it was opened (each costs
// password_hash.memory_kib of memory and tens of milliseconds).
func (s *Store) PasswordHashes() int64 {
	return s.hashes.Load()
}

// hash computes a new password hash, in turn.
func (s *Store) hash(ctx context.Context, password string) (string, error) {
	if err := s.acquireHashing(ctx); err != nil {
		return "", err
	}
	defer func() { <-s.hashing }()
	return HashPassword(password, s.opts.Hash)
}

// SetPassword replaces the account's stored hash (after the legacy server
// accepted a changed password).
func (s *Store) SetPassword(ctx context.Context, name, password string) error {
	hash, err := s.hash(ctx, password)
	if err != nil {
		return fmt.Errorf("set password %s: %w", name, err)
	}
	return s.updateAccount(ctx, name, "password_hash = ?", hash)
}

// Transition moves the account from one state to another atomically: it
// fails with ErrStateChanged if the account is not in from.
func (s *Store) Transition(ctx context.Context, name string, from, to State) error {
	now := time.Now().Unix()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		set := "state = ?, state_changed_at = ?"
		args := []any{to, now}
		if to == StateCaptured {
			set += ", captured_at = ?"
			args = append(args, now)
		}
		res, err := tx.ExecContext(ctx, "UPDATE accounts SET "+set+" WHERE name = ? AND state = ?", append(args, name, from)...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			var exists int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM accounts WHERE name = ?", name).Scan(&exists); err != nil {
				return err
			}
			if exists == 0 {
				return ErrNotFound
			}
			return ErrStateChanged
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("account %s: %s -> %s: %w", name, from, to, err)
	}
	return nil
}

// SetLegacyLogin records the name the legacy server accepted for the
// account.
func (s *Store) SetLegacyLogin(ctx context.Context, name, login string) error {
	return s.updateAccount(ctx, name, "legacy_login = ?", login)
}

// SetLegacyNamespace records the legacy server's personal namespace prefix,
// hierarchy separator, and whether special-use attributes were guessed.
func (s *Store) SetLegacyNamespace(ctx context.Context, name, prefix, separator string, specialUseGuessed bool) error {
	return s.noteAccount(ctx, name, "legacy_prefix = ?, legacy_separator = ?, special_use_guessed = ?",
		prefix, separator, specialUseGuessed)
}

// SetLegacySize records the legacy mailbox's size, as last measured.
func (s *Store) SetLegacySize(ctx context.Context, name string, messages, bytes int64) error {
	return s.noteAccount(ctx, name, "legacy_messages = ?, legacy_bytes = ?", messages, bytes)
}

// RecordSync records the end of a sync pass: its time and its error (""
// when it succeeded).
func (s *Store) RecordSync(ctx context.Context, name string, at time.Time, syncErr string) error {
	if syncErr != "" {
		return s.noteAccount(ctx, name, "last_error = ?", syncErr)
	}
	return s.noteAccount(ctx, name, "last_sync_at = ?, last_error = ''", unixOrZero(at))
}

// noteAccount is updateAccount for what a capture notes about the legacy
// mailbox as it goes (its namespace, its size, when it was last synced):
// the commit is not flushed by itself (writeTxRelaxed). A power loss may
// lose such a note until the next durable commit; the next pass notes it
// again.
func (s *Store) noteAccount(ctx context.Context, name, set string, args ...any) error {
	return s.setAccount(ctx, s.writeTxRelaxed, name, set, args...)
}

func (s *Store) updateAccount(ctx context.Context, name, set string, args ...any) error {
	return s.setAccount(ctx, s.writeTx, name, set, args...)
}

// setAccount updates one account's columns in a transaction run by write.
func (s *Store) setAccount(ctx context.Context, write func(context.Context, func(*sql.Tx) error) error, name, set string, args ...any) error {
	err := write(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE accounts SET "+set+" WHERE name = ?", append(args, name)...)
	})
	if err != nil {
		return fmt.Errorf("update account %s: %w", name, err)
	}
	return nil
}

// EveryAccountProgress returns, by account id, how many messages and
// bytes are stored for each account that has any (the kept totals: one
// row read an account, in one query).
func (s *Store) EveryAccountProgress(ctx context.Context) (map[int64]Progress, error) {
	type row struct {
		id int64
		p  Progress
	}
	rows, err := queryAll(ctx, s.read, func(r interface{ Scan(...any) error }) (row, error) {
		var out row
		return out, r.Scan(&out.id, &out.p.Messages, &out.p.Bytes)
	}, "SELECT account_id, messages, bytes FROM account_totals")
	if err != nil {
		return nil, fmt.Errorf("progress of the accounts: %w", err)
	}
	out := make(map[int64]Progress, len(rows))
	for _, r := range rows {
		out[r.id] = r.p
	}
	return out, nil
}

// AccountProgress returns how many messages and bytes are stored for the
// account (kept as messages come and go: one row read).
func (s *Store) AccountProgress(ctx context.Context, accountID int64) (Progress, error) {
	var p Progress
	err := s.read.QueryRowContext(ctx, `SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0) FROM account_totals
		WHERE account_id = ?`, accountID).Scan(&p.Messages, &p.Bytes)
	if err != nil {
		return Progress{}, fmt.Errorf("progress of account %d: %w", accountID, err)
	}
	return p, nil
}

// TotalProgress returns how many messages and bytes are stored (the
// accounts' kept totals), and how many the legacy mailboxes of all
// accounts held when last measured.
func (s *Store) TotalProgress(ctx context.Context) (stored, legacy Progress, err error) {
	err = s.read.QueryRowContext(ctx, "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0) FROM account_totals").Scan(&stored.Messages, &stored.Bytes)
	if err != nil {
		return stored, legacy, fmt.Errorf("total progress: %w", err)
	}
	err = s.read.QueryRowContext(ctx, "SELECT coalesce(sum(legacy_messages), 0), coalesce(sum(legacy_bytes), 0) FROM accounts").Scan(&legacy.Messages, &legacy.Bytes)
	if err != nil {
		return stored, legacy, fmt.Errorf("total progress: %w", err)
	}
	return stored, legacy, nil
}

func isUniqueViolation(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}
