package store

import (
	"context"
	"fmt"
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
// captured with one, else Dovecot's default format (%08Xu%08Xv), which stays
// stable for the life of the message.
func UIDL(m Message, uidvalidity uint32) string {
	if m.POP3UIDL != "" {
		return m.POP3UIDL
	}
	return fmt.Sprintf("%08X%08X", m.UID, uidvalidity)
}
