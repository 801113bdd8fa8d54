package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Mailbox is one folder of an account.
type Mailbox struct {
	ID          int64
	AccountID   int64
	Name        string // full name as clients see it, with the account's separator
	UIDValidity uint32
	UIDNext     uint32
	// SpecialUse holds RFC 6154 attributes ("\Sent", "\Trash", ...).
	SpecialUse []string
	Subscribed bool
	// LegacyUIDValidity is the legacy folder's UIDVALIDITY this mailbox
	// mirrors; 0 for a mailbox created locally.
	LegacyUIDValidity uint32
	// LegacyUIDNext is the legacy UIDNEXT last synced: legacy messages
	// with lower UIDs have been copied (or were gone) already.
	LegacyUIDNext uint32
	// LegacySyncState is what the capture recorded when it last finished
	// syncing this mailbox (SetLegacySyncState); opaque to the store.
	LegacySyncState string
	// RecentUID is the first UID no session has been given as \Recent
	// yet (RFC 3501 2.3.2): messages from it on are recent for the next
	// session that selects the mailbox.
	RecentUID uint32
}

// MailboxSpec describes a mailbox to create.
type MailboxSpec struct {
	Name string
	// UIDValidity 0 chooses a fresh one.
	UIDValidity uint32
	// UIDNext 0 means 1.
	UIDNext           uint32
	SpecialUse        []string
	Subscribed        bool
	LegacyUIDValidity uint32
	// Mirror marks the copy of a legacy folder made by a capture: its
	// creation is not flushed to disk by itself (writeTxRelaxed). The
	// first durable commit after it (the folder's first batch) makes it
	// durable; lost to a power loss before that, the next pass creates
	// it again.
	Mirror bool
}

// MailboxStatus is what STATUS and SELECT report.
type MailboxStatus struct {
	Messages    uint32
	Recent      uint32
	Unseen      uint32
	Deleted     uint32
	Size        int64
	UIDNext     uint32
	UIDValidity uint32
}

const mailboxColumns = `id, account_id, name, uidvalidity, uidnext, special_use,
	EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id = mailboxes.account_id AND s.name = mailboxes.name),
	legacy_uidvalidity, legacy_uidnext, legacy_state, recent_uid`

func scanMailbox(row interface{ Scan(...any) error }) (Mailbox, error) {
	var m Mailbox
	var special string
	err := row.Scan(&m.ID, &m.AccountID, &m.Name, &m.UIDValidity, &m.UIDNext, &special, &m.Subscribed, &m.LegacyUIDValidity, &m.LegacyUIDNext, &m.LegacySyncState, &m.RecentUID)
	if special != "" {
		m.SpecialUse = strings.Fields(special)
	}
	return m, err
}

// normalizeMailboxName makes INBOX case-insensitive, as RFC 3501 says.
func normalizeMailboxName(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

// CreateMailbox creates a mailbox; ErrExists if the name is taken.
func (s *Store) CreateMailbox(ctx context.Context, accountID int64, spec MailboxSpec) (Mailbox, error) {
	name := normalizeMailboxName(spec.Name)
	if name == "" {
		return Mailbox{}, fmt.Errorf("create mailbox: empty name")
	}
	uidnext := max(spec.UIDNext, 1)
	var id int64
	write := s.writeTx
	if spec.Mirror {
		write = s.writeTxRelaxed
	}
	err := write(ctx, func(tx *sql.Tx) error {
		uidvalidity, err := takeUIDValidity(ctx, tx, accountID, spec.UIDValidity)
		if err != nil {
			return err
		}
		// A mailbox created with a UIDNEXT (a copy of a legacy folder) has
		// nothing recent below it.
		res, err := tx.ExecContext(ctx, `INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, special_use, legacy_uidvalidity, recent_uid)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, accountID, name, uidvalidity, uidnext, strings.Join(spec.SpecialUse, " "), spec.LegacyUIDValidity, uidnext)
		if isUniqueViolation(err) {
			return ErrExists
		}
		if err != nil {
			return err
		}
		if spec.Subscribed {
			if err := setSubscribed(ctx, tx, accountID, name, true); err != nil {
				return err
			}
		}
		id, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return Mailbox{}, fmt.Errorf("create mailbox %q: %w", name, err)
	}
	return s.MailboxByID(ctx, id)
}

// takeUIDValidity returns the UIDVALIDITY for a new mailbox of the
// account and records it: want when given (a copy of a legacy folder),
// else one from the clock above every value the account ever gave, so a
// name deleted and created again, even within the same second or after a
// restart, never gets an old UIDVALIDITY back (RFC 3501 2.3.1.1).
func takeUIDValidity(ctx context.Context, tx *sql.Tx, accountID int64, want uint32) (uint32, error) {
	var last, highest uint32
	err := tx.QueryRowContext(ctx, `SELECT uidvalidity_last, coalesce((SELECT max(uidvalidity) FROM mailboxes WHERE account_id = accounts.id), 0)
		FROM accounts WHERE id = ?`, accountID).Scan(&last, &highest)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("account %d: %w", accountID, ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	v := want
	if v == 0 {
		v = max(uint32(time.Now().Unix()), last+1, highest+1)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE accounts SET uidvalidity_last = max(uidvalidity_last, ?) WHERE id = ?", v, accountID); err != nil {
		return 0, err
	}
	return v, nil
}

// MailboxByID returns a mailbox or ErrNotFound.
func (s *Store) MailboxByID(ctx context.Context, id int64) (Mailbox, error) {
	m, err := scanMailbox(s.read.QueryRowContext(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Mailbox{}, fmt.Errorf("mailbox %d: %w", id, ErrNotFound)
	}
	return m, err
}

// MailboxByName returns the account's mailbox called name, or ErrNotFound.
func (s *Store) MailboxByName(ctx context.Context, accountID int64, name string) (Mailbox, error) {
	name = normalizeMailboxName(name)
	m, err := scanMailbox(s.read.QueryRowContext(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE account_id = ? AND name = ?", accountID, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Mailbox{}, fmt.Errorf("mailbox %q: %w", name, ErrNotFound)
	}
	return m, err
}

// Mailboxes lists the account's mailboxes by name.
func (s *Store) Mailboxes(ctx context.Context, accountID int64) ([]Mailbox, error) {
	out, err := queryAll(ctx, s.read, scanMailbox, "SELECT "+mailboxColumns+" FROM mailboxes WHERE account_id = ? ORDER BY name", accountID)
	if err != nil {
		return nil, fmt.Errorf("list mailboxes: %w", err)
	}
	return out, nil
}

// UpdateMailbox records what a sync saw of the mailbox's legacy folder:
// it sets the special-use attributes and subscription, and raises UIDNEXT
// to at least the legacy uidnext (it never lowers it: invariant 4), and
// the legacy UIDNEXT reached with it (see SetLegacyUIDNext). While the
// account is being captured, nothing below uidnext is \Recent: the
// messages were copied, not delivered.
func (s *Store) UpdateMailbox(ctx context.Context, id int64, specialUse []string, subscribed bool, uidnext uint32) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := execOne(ctx, tx, `UPDATE mailboxes SET special_use = ?, uidnext = max(uidnext, ?), legacy_uidnext = max(legacy_uidnext, ?),
			recent_uid = CASE WHEN (SELECT state FROM accounts WHERE id = account_id) = 'captured' THEN recent_uid ELSE max(recent_uid, ?) END
			WHERE id = ?`, strings.Join(specialUse, " "), uidnext, uidnext, uidnext, id); err != nil {
			return err
		}
		var accountID int64
		var name string
		if err := tx.QueryRowContext(ctx, "SELECT account_id, name FROM mailboxes WHERE id = ?", id).Scan(&accountID, &name); err != nil {
			return err
		}
		return setSubscribed(ctx, tx, accountID, name, subscribed)
	})
	if err != nil {
		return fmt.Errorf("update mailbox %d: %w", id, err)
	}
	return nil
}

// SetRecentUIDs raises the mailboxes' first UID not yet given as \Recent
// (mailbox id -> UID); it never goes down.
func (s *Store) SetRecentUIDs(ctx context.Context, uids map[int64]uint32) error {
	if len(uids) == 0 {
		return nil
	}
	err := s.writeTxRelaxed(ctx, func(tx *sql.Tx) error {
		for id, uid := range uids {
			if _, err := tx.ExecContext(ctx, "UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id = ?", uid, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record recent UIDs: %w", err)
	}
	return nil
}

// SetLegacyUIDNext records the legacy UIDNEXT a sync reached; it never
// goes down.
func (s *Store) SetLegacyUIDNext(ctx context.Context, id int64, uidnext uint32) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE mailboxes SET legacy_uidnext = max(legacy_uidnext, ?) WHERE id = ?", uidnext, id)
	})
	if err != nil {
		return fmt.Errorf("mailbox %d: legacy UIDNEXT: %w", id, err)
	}
	return nil
}

// SetLegacySyncState records what a finished sync of the mailbox saw (see
// Mailbox.LegacySyncState). The commit is not flushed by itself
// (writeTxRelaxed): a state lost to a power loss only makes the next pass
// compare the folder message by message.
func (s *Store) SetLegacySyncState(ctx context.Context, id int64, state string) error {
	err := s.writeTxRelaxed(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE mailboxes SET legacy_state = ? WHERE id = ?", state, id)
	})
	if err != nil {
		return fmt.Errorf("mailbox %d: legacy sync state: %w", id, err)
	}
	return nil
}

// SetSubscribed subscribes the account to a name, or unsubscribes it.
// A name may be subscribed whether or not a mailbox has it (RFC 3501
// 6.3.6).
func (s *Store) SetSubscribed(ctx context.Context, accountID int64, name string, subscribed bool) error {
	name = normalizeMailboxName(name)
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		return setSubscribed(ctx, tx, accountID, name, subscribed)
	})
	if err != nil {
		return fmt.Errorf("subscribe %q: %w", name, err)
	}
	return nil
}

func setSubscribed(ctx context.Context, tx *sql.Tx, accountID int64, name string, subscribed bool) error {
	var err error
	if subscribed {
		_, err = tx.ExecContext(ctx, "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)", accountID, name)
	} else {
		_, err = tx.ExecContext(ctx, "DELETE FROM subscriptions WHERE account_id = ? AND name = ?", accountID, name)
	}
	return err
}

// Subscriptions lists the names the account is subscribed to, sorted.
func (s *Store) Subscriptions(ctx context.Context, accountID int64) ([]string, error) {
	out, err := queryAll(ctx, s.read, func(row interface{ Scan(...any) error }) (string, error) {
		var name string
		err := row.Scan(&name)
		return name, err
	}, "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name", accountID)
	if err != nil {
		return nil, fmt.Errorf("subscriptions: %w", err)
	}
	return out, nil
}

// RenameMailbox renames a mailbox and its children (names starting with
// oldName+separator). The mailboxes keep their UIDVALIDITY: their messages
// and UIDs are unchanged. Renaming INBOX is refused here; the IMAP layer
// implements RFC 3501's move-the-messages semantics on top of MoveMessages.
func (s *Store) RenameMailbox(ctx context.Context, accountID int64, oldName, newName, separator string) error {
	oldName, newName = normalizeMailboxName(oldName), normalizeMailboxName(newName)
	if oldName == "INBOX" {
		return fmt.Errorf("rename INBOX: not supported by the store")
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var taken int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM mailboxes WHERE account_id = ? AND name = ?", accountID, newName).Scan(&taken); err != nil {
			return err
		}
		if taken > 0 {
			return ErrExists
		}
		if err := execOne(ctx, tx, "UPDATE mailboxes SET name = ? WHERE account_id = ? AND name = ?", newName, accountID, oldName); err != nil {
			return err
		}
		// Subscriptions follow the mailbox, as Dovecot's do.
		if _, err := tx.ExecContext(ctx, "UPDATE OR REPLACE subscriptions SET name = ? WHERE account_id = ? AND name = ?", newName, accountID, oldName); err != nil {
			return err
		}
		if separator == "" {
			return nil
		}
		prefix := oldName + separator
		_, err := tx.ExecContext(ctx, `UPDATE mailboxes SET name = ? || substr(name, ?) WHERE account_id = ? AND substr(name, 1, ?) = ?`,
			newName+separator, len(prefix)+1, accountID, len(prefix), prefix)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE OR REPLACE subscriptions SET name = ? || substr(name, ?) WHERE account_id = ? AND substr(name, 1, ?) = ?`,
			newName+separator, len(prefix)+1, accountID, len(prefix), prefix)
		return err
	})
	if err != nil {
		return fmt.Errorf("rename mailbox %q to %q: %w", oldName, newName, err)
	}
	return nil
}

// DeleteMailbox removes a mailbox and its messages (their bodies are
// unlinked after the commit).
func (s *Store) DeleteMailbox(ctx context.Context, id int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var uids []uint32
	err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		var err error
		if uids, err = queryUIDs(ctx, tx, "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) SELECT id FROM messages WHERE mailbox_id = ?", id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM messages WHERE mailbox_id = ?", id); err != nil {
			return err
		}
		return execOne(ctx, tx, "DELETE FROM mailboxes WHERE id = ?", id)
	})
	if err != nil {
		return fmt.Errorf("delete mailbox %d: %w", id, err)
	}
	s.watchers.publish(Change{MailboxID: id, Kind: MailboxDeleted, UIDs: uids})
	if err := s.unlinkQueued(ctx); err != nil {
		s.log.Error("the body files of a deleted mailbox could not be removed", "mailbox", id, "err", err)
	}
	return nil
}

// Status returns the counts STATUS reports. Recent counts the messages
// from the mailbox's \Recent boundary on, or from recentFrom when that is
// higher (a boundary not written yet).
func (s *Store) Status(ctx context.Context, mailboxID int64, recentFrom uint32) (MailboxStatus, error) {
	var st MailboxStatus
	err := s.read.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM messages WHERE mailbox_id = b.id),
		(SELECT count(*) FROM messages WHERE mailbox_id = b.id AND NOT `+hasFlagSQL+`),
		(SELECT count(*) FROM messages WHERE mailbox_id = b.id AND `+hasFlagSQL+`),
		(SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = b.id),
		(SELECT count(*) FROM messages WHERE mailbox_id = b.id AND uid >= max(b.recent_uid, ?)),
		b.uidnext, b.uidvalidity
		FROM mailboxes b WHERE b.id = ?`, `\Seen`, `\Deleted`, recentFrom, mailboxID).Scan(
		&st.Messages, &st.Unseen, &st.Deleted, &st.Size, &st.Recent, &st.UIDNext, &st.UIDValidity)
	return st, statusError(mailboxID, err)
}

// Totals is Status without the flag counts (Unseen and Deleted stay 0),
// which cost a scan of every message's flags.
func (s *Store) Totals(ctx context.Context, mailboxID int64) (MailboxStatus, error) {
	var st MailboxStatus
	err := s.read.QueryRowContext(ctx, `SELECT count(m.id), coalesce(sum(m.size), 0), b.uidnext, b.uidvalidity
		FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.id = ? GROUP BY b.id`, mailboxID).Scan(
		&st.Messages, &st.Size, &st.UIDNext, &st.UIDValidity)
	return st, statusError(mailboxID, err)
}

func statusError(mailboxID int64, err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("status of mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("status of mailbox %d: %w", mailboxID, err)
	}
	return nil
}

// hasFlagSQL is true when the flags column holds the flag bound to its
// placeholder (case-insensitive, as IMAP flags are).
const hasFlagSQL = "instr(' ' || lower(flags) || ' ', ' ' || lower(?) || ' ') > 0"
