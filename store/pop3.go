package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
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
	// In UID (index) order, a few hundred messages a statement: a
	// 100,000-message INBOX is mapped in a few hundred statements.
	uids := make([]uint32, 0, len(uidls))
	for uid := range uidls {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	const chunk = 300
	err := s.writeTxRelaxed(ctx, func(tx *sql.Tx) error {
		// Clear first, so that UIDLs moving between messages never collide
		// with the unique index halfway.
		for part := range slices.Chunk(uids, chunk) {
			args := []any{mailboxID}
			for _, uid := range part {
				args = append(args, uid)
			}
			if _, err := tx.ExecContext(ctx, "UPDATE messages SET pop3_uidl = NULL WHERE mailbox_id = ? AND uid IN ("+
				placeholders(len(part))+") AND pop3_uidl IS NOT NULL", args...); err != nil {
				return err
			}
		}
		for part := range slices.Chunk(uids, chunk) {
			var q strings.Builder
			q.WriteString("UPDATE messages SET pop3_uidl = CASE uid")
			args := make([]any, 0, 3*len(part)+1)
			for _, uid := range part {
				q.WriteString(" WHEN ? THEN ?")
				args = append(args, uid, nullString(uidls[uid]))
			}
			q.WriteString(" END WHERE mailbox_id = ? AND uid IN (" + placeholders(len(part)) + ")")
			args = append(args, mailboxID)
			for _, uid := range part {
				args = append(args, uid)
			}
			res, err := tx.ExecContext(ctx, q.String(), args...)
			if err != nil {
				return fmt.Errorf("UIDs %d to %d: %w", part[0], part[len(part)-1], err)
			}
			if n, _ := res.RowsAffected(); n != int64(len(part)) {
				return fmt.Errorf("UIDs %d to %d: %d of %d messages found: %w", part[0], part[len(part)-1], n, len(part), ErrNotFound)
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
