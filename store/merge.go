package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// MergeResult says what MergeAccounts did.
type MergeResult struct {
	// Kept is the account whose state and password hash the merged
	// account has ("from" when it was further along).
	Kept string
	// Moved counts messages moved over with fresh UIDs; Duplicates those
	// both accounts had (kept once); Folders the folders moved whole.
	Moved, Duplicates, Folders int
}

// stateRank orders the states by how far along the migration they are.
var stateRank = map[State]int{StateCapturing: 0, StateCutover: 1, StateCaptured: 2}

// MergeAccounts folds account from into account into: two accounts that
// stand for one legacy mailbox (logins under two names). The merged
// account is named into, and has the state and password hash of the one
// further along (into's when both are as far). Nothing either holds is
// lost: a folder only one has is kept whole; in a folder both have, the
// messages the kept account lacks are moved to it with fresh UIDs, and
// those both have (the same legacy UID under the same legacy
// UIDVALIDITY, or the same bytes) are kept once. Logins, held mail,
// subscriptions and trace addresses follow. Sealed passwords of a
// renamed account are dropped (they are bound to the old name; the next
// login seals the password again). Everything happens in one transaction;
// the store must not be open in serve at the same time.
func (s *Store) MergeAccounts(ctx context.Context, from, into string) (MergeResult, error) {
	var res MergeResult
	a, err := s.Account(ctx, from)
	if err != nil {
		return res, fmt.Errorf("merge: %w", err)
	}
	b, err := s.Account(ctx, into)
	if err != nil {
		return res, fmt.Errorf("merge: %w", err)
	}
	if a.ID == b.ID {
		return res, fmt.Errorf("merge %s into %s: one account", from, into)
	}
	if a.State == StateCutover || b.State == StateCutover {
		return res, fmt.Errorf("merge %s into %s: an account is in cut-over; wait for it to end", from, into)
	}
	kept, gone := b, a
	if stateRank[a.State] > stateRank[b.State] {
		kept, gone = a, b
	}
	res.Kept = kept.Name
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		var moveErr error
		if res.Moved, res.Duplicates, res.Folders, moveErr = mergeMailboxes(ctx, tx, gone.ID, kept.ID); moveErr != nil {
			return moveErr
		}
		for _, q := range []string{
			"INSERT OR IGNORE INTO subscriptions (account_id, name) SELECT ?1, name FROM subscriptions WHERE account_id = ?2",
			"DELETE FROM subscriptions WHERE account_id = ?2",
			"UPDATE spool SET account_id = ?1 WHERE account_id = ?2",
			`INSERT INTO trace_addresses (account_id, address, first_at, last_at, count)
				SELECT ?1, address, first_at, last_at, count FROM trace_addresses WHERE account_id = ?2 AND true
				ON CONFLICT (account_id, address) DO UPDATE SET first_at = min(first_at, excluded.first_at),
					last_at = max(last_at, excluded.last_at), count = count + excluded.count`,
			"DELETE FROM trace_addresses WHERE account_id = ?2",
			"UPDATE accounts SET uidvalidity_last = max(uidvalidity_last, (SELECT uidvalidity_last FROM accounts WHERE id = ?2)) WHERE id = ?1",
		} {
			if _, err := tx.ExecContext(ctx, q, kept.ID, gone.ID); err != nil {
				return err
			}
		}
		// Logins are recorded by name: both names' counts go to into.
		for _, name := range []string{from, into} {
			if strings.EqualFold(name, into) {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO logins (account, protocol, first_at, last_at, count)
				SELECT ?1, protocol, first_at, last_at, count FROM logins WHERE account = ?2 AND true
				ON CONFLICT (account, protocol) DO UPDATE SET first_at = min(first_at, excluded.first_at),
					last_at = max(last_at, excluded.last_at), count = count + excluded.count`, into, name); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "DELETE FROM logins WHERE account = ?", name); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM credentials WHERE account = ?", gone.Name); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM accounts WHERE id = ?", gone.ID); err != nil {
			return err
		}
		if kept.Name != into {
			if _, err := tx.ExecContext(ctx, "DELETE FROM credentials WHERE account = ?", kept.Name); err != nil {
				return err
			}
			return execOne(ctx, tx, "UPDATE accounts SET name = ? WHERE id = ?", into, kept.ID)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("merge %s into %s: %w", from, into, err)
	}
	if err := s.unlinkQueued(ctx); err != nil {
		s.log.Error("the body files of merged duplicates could not be removed", "err", err)
	}
	return res, nil
}

// mergeMailboxes moves the mailboxes of account gone to account kept (see
// MergeAccounts).
func mergeMailboxes(ctx context.Context, tx *sql.Tx, gone, kept int64) (moved, duplicates, folders int, err error) {
	type box struct {
		id, legacyValidity int64
		name               string
	}
	boxes := func(account int64) (map[string]box, error) {
		rows, err := tx.QueryContext(ctx, "SELECT id, name, legacy_uidvalidity FROM mailboxes WHERE account_id = ?", account)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := map[string]box{}
		for rows.Next() {
			var b box
			if err := rows.Scan(&b.id, &b.name, &b.legacyValidity); err != nil {
				return nil, err
			}
			key := b.name
			if strings.EqualFold(key, "INBOX") {
				key = "INBOX"
			}
			out[key] = b
		}
		return out, rows.Err()
	}
	theirs, err := boxes(gone)
	if err != nil {
		return 0, 0, 0, err
	}
	ours, err := boxes(kept)
	if err != nil {
		return 0, 0, 0, err
	}
	alloc := newUIDAllocator(tx)
	for key, src := range theirs {
		dst, both := ours[key]
		if !both {
			if _, err := tx.ExecContext(ctx, "UPDATE mailboxes SET account_id = ? WHERE id = ?", kept, src.id); err != nil {
				return 0, 0, 0, err
			}
			folders++
			continue
		}
		sameLegacy := src.legacyValidity != 0 && src.legacyValidity == dst.legacyValidity
		rows, err := tx.QueryContext(ctx, "SELECT id, legacy_uid, sha256, pop3_uidl FROM messages WHERE mailbox_id = ? ORDER BY uid", src.id)
		if err != nil {
			return 0, 0, 0, err
		}
		type msg struct {
			id        int64
			legacyUID sql.NullInt64
			sum       []byte
			uidl      sql.NullString
		}
		var msgs []msg
		for rows.Next() {
			var m msg
			if err := rows.Scan(&m.id, &m.legacyUID, &m.sum, &m.uidl); err != nil {
				rows.Close()
				return 0, 0, 0, err
			}
			msgs = append(msgs, m)
		}
		rows.Close()
		for _, m := range msgs {
			var dup int
			err := tx.QueryRowContext(ctx, `SELECT count(*) FROM messages WHERE mailbox_id = ?1
				AND (sha256 = ?2 OR (?3 AND legacy_uid = ?4))`, dst.id, m.sum, sameLegacy, m.legacyUID).Scan(&dup)
			if err != nil {
				return 0, 0, 0, err
			}
			if dup > 0 {
				if _, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", m.id); err != nil {
					return 0, 0, 0, err
				}
				if _, err := tx.ExecContext(ctx, "DELETE FROM messages WHERE id = ?", m.id); err != nil {
					return 0, 0, 0, err
				}
				duplicates++
				continue
			}
			uid, err := alloc.take(ctx, dst.id, 0)
			if err != nil {
				return 0, 0, 0, err
			}
			legacyUID := m.legacyUID
			if !sameLegacy {
				legacyUID = sql.NullInt64{}
			}
			var taken int
			if m.uidl.Valid {
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM messages WHERE mailbox_id = ? AND pop3_uidl = ?", dst.id, m.uidl).Scan(&taken); err != nil {
					return 0, 0, 0, err
				}
			}
			uidl := m.uidl
			if taken > 0 {
				uidl = sql.NullString{}
			}
			if _, err := tx.ExecContext(ctx, "UPDATE messages SET mailbox_id = ?, uid = ?, legacy_uid = ?, pop3_uidl = ? WHERE id = ?",
				dst.id, uid, legacyUID, uidl, m.id); err != nil {
				return 0, 0, 0, err
			}
			moved++
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM mailboxes WHERE id = ?", src.id); err != nil {
			return 0, 0, 0, err
		}
	}
	if err := alloc.flush(ctx); err != nil {
		return 0, 0, 0, err
	}
	return moved, duplicates, folders, nil
}
