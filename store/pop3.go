package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
)

// MaildropEntry is one message of a POP3 maildrop.
type MaildropEntry struct {
	UID  uint32
	Size int64
	UIDL string
	// ID opens the body with OpenBody.
	ID int64
}

// Maildrop returns the account's INBOX and its messages in UID order, as
// POP3 numbers them. Deletions are applied at QUIT with Expunge.
func (s *Store) Maildrop(ctx context.Context, accountID int64) (Mailbox, []MaildropEntry, error) {
	inbox, err := s.MailboxByName(ctx, accountID, "INBOX")
	if err != nil {
		return Mailbox{}, nil, fmt.Errorf("maildrop of account %d: %w", accountID, err)
	}
	msgs, err := s.Messages(ctx, inbox.ID, AllUIDs)
	if err != nil {
		return Mailbox{}, nil, fmt.Errorf("maildrop of account %d: %w", accountID, err)
	}
	out := make([]MaildropEntry, len(msgs))
	for i, m := range msgs {
		out[i] = MaildropEntry{UID: m.UID, Size: m.Size, UIDL: UIDL(m, inbox.UIDValidity), ID: m.ID}
	}
	return inbox, out, nil
}

// UIDL is the message's POP3 unique id: the legacy server's when it was
// captured with one, else the form Dovecot's default %08Xu%08Xv produces (lower-case hex), which stays
// stable for the life of the message.
func UIDL(m Message, uidvalidity uint32) string {
	if m.POP3UIDL != "" {
		return m.POP3UIDL
	}
	return fmt.Sprintf("%08x%08x", m.UID, uidvalidity)
}

// SetPOP3UIDLs records the legacy UIDL of messages of a mailbox (by UID),
// so POP3 clients see the UIDLs the legacy server gave them. The commit
// is not flushed by itself (writeTxRelaxed): the cut-over's durable
// commit comes after it, and UIDLs lost to a power loss before that are
// mapped again by the next pass.
func (s *Store) SetPOP3UIDLs(ctx context.Context, mailboxID int64, uidls map[uint32]string) error {
	if len(uidls) == 0 {
		return nil
	}
	// Two prepared statements for every message, in UID (index) order:
	// a 100,000-message INBOX is mapped in under a second.
	uids := make([]uint32, 0, len(uidls))
	for uid := range uidls {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	err := s.writeTxRelaxed(ctx, func(tx *sql.Tx) error {
		clear, err := tx.PrepareContext(ctx, "UPDATE messages SET pop3_uidl = NULL WHERE mailbox_id = ? AND uid = ? AND pop3_uidl IS NOT NULL")
		if err != nil {
			return err
		}
		defer clear.Close()
		set, err := tx.PrepareContext(ctx, "UPDATE messages SET pop3_uidl = ? WHERE mailbox_id = ? AND uid = ?")
		if err != nil {
			return err
		}
		defer set.Close()
		// Clear first, so that UIDLs moving between messages never collide
		// with the unique index halfway.
		for _, uid := range uids {
			if _, err := clear.ExecContext(ctx, mailboxID, uid); err != nil {
				return err
			}
		}
		for _, uid := range uids {
			res, err := set.ExecContext(ctx, nullString(uidls[uid]), mailboxID, uid)
			if err != nil {
				return fmt.Errorf("UID %d: %w", uid, err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("UID %d: %w", uid, ErrNotFound)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set POP3 UIDLs in mailbox %d: %w", mailboxID, err)
	}
	return nil
}

// UnmappedUIDLs counts the messages of a mailbox copied from the legacy
// server (they have a legacy UID) that have no legacy POP3 UIDL recorded
// yet: while there are none, the legacy POP3 server need not be asked.
func (s *Store) UnmappedUIDLs(ctx context.Context, mailboxID int64) (int, error) {
	var n int
	err := s.read.QueryRowContext(ctx,
		"SELECT count(*) FROM messages WHERE mailbox_id = ? AND legacy_uid IS NOT NULL AND pop3_uidl IS NULL", mailboxID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count unmapped UIDLs in mailbox %d: %w", mailboxID, err)
	}
	return n, nil
}
