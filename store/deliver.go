package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Destination is where one copy of a delivered message goes: a mailbox
// (local delivery), or the spool (relayed to the legacy server, or held
// for an account in cut-over).
type Destination struct {
	// MailboxID, if set, is the mailbox the message is added to.
	MailboxID int64
	// Route is the spool route when MailboxID is 0.
	Route SpoolRoute
	// AccountID is the held account (RouteHold).
	AccountID int64
	// To are the spool entry's recipients.
	To []string
	// Flags are the message's flags and keywords in MailboxID (a Sieve
	// script's imap4flags).
	Flags []string
}

// Delivered tells where each copy of a delivered message went, in the
// order of the destinations: the UID in its mailbox, or the spool id.
type Delivered struct {
	UID     uint32
	SpoolID int64
}

// Deliver stores one message for every destination at once: the body is
// written once (the other copies are hard links of it), made durable with
// one filesystem sync, and every message row and spool entry is inserted
// in one transaction. When Deliver returns without error every copy is
// durable (the SMTP server may answer 250); on error none exists, so a
// sender's retry delivers exactly one copy to each. Nothing is visible
// before the commit. The recipients of a spool entry for the legacy
// server are recorded (RelayedSince) in the same transaction.
func (s *Store) Deliver(ctx context.Context, from string, dests []Destination, r io.Reader) ([]Delivered, error) {
	if len(dests) == 0 {
		return nil, errors.New("deliver: no destination")
	}
	ids := idSource{alloc: &s.ids}
	defer ids.release()
	bd, err := s.writeBody(ctx, &ids, r)
	if err != nil {
		return nil, fmt.Errorf("deliver: %w", err)
	}
	out, err := s.deliverBody(ctx, &ids, from, bd, dests, 0)
	if err != nil {
		return nil, fmt.Errorf("deliver: %w", err)
	}
	return out, nil
}

// DeliverSpooled delivers a spooled message to new destinations and
// removes it from the spool, in one transaction: the relay queue resolves
// mail spooled for a legacy server that has since been retired. A crash
// leaves either the spooled message or its deliveries, never both.
func (s *Store) DeliverSpooled(ctx context.Context, id int64, dests []Destination) error {
	bd := body{id: id}
	var from string
	var sum []byte
	err := s.read.QueryRowContext(ctx, "SELECT sender, size, sha256, message_id, structure FROM spool WHERE id = ?", id).
		Scan(&from, &bd.size, &sum, &bd.messageID, &bd.structure)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("deliver spooled message %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("deliver spooled message %d: %w", id, err)
	}
	copy(bd.sum[:], sum)
	ids := idSource{alloc: &s.ids}
	defer ids.release()
	if _, err := s.deliverBody(ctx, &ids, from, bd, dests, id); err != nil {
		return fmt.Errorf("deliver spooled message %d: %w", id, err)
	}
	if err := s.unlinkQueued(ctx); err != nil {
		s.log.Error("the file of a delivered spooled message could not be removed", "id", id, "err", err)
	}
	return s.ClearInFlight(id)
}

// deliverBody stores bd (a body file written already) for every
// destination: the first gets bd's file, the others hard links of it
// (every one a link when bd is a spooled message's, spooled != 0, which
// is removed from the spool in the same transaction).
func (s *Store) deliverBody(ctx context.Context, ids *idSource, from string, bd body, dests []Destination, spooled int64) ([]Delivered, error) {
	if len(dests) == 0 && spooled == 0 {
		return nil, errors.New("no destination")
	}
	blobs := []int64{bd.id}
	linked := dests[1:]
	if spooled != 0 {
		blobs, linked = nil, dests // the spooled file stays the spool's until the commit
	}
	committed := false
	defer func() {
		if !committed {
			s.removeBlobs(blobs)
		}
	}()
	for range linked {
		id, err := ids.take(ctx)
		if err != nil {
			return nil, err
		}
		if err := s.linkBlob(bd.id, id); err != nil {
			return nil, err
		}
		blobs = append(blobs, id)
	}
	if err := s.syncBodies(); err != nil {
		return nil, fmt.Errorf("sync bodies: %w", err)
	}
	out := make([]Delivered, len(dests))
	var added []Message
	now := time.Now()
	date := time.Unix(now.Unix(), 0)
	_, offset := date.Zone()
	s.wmu.Lock()
	err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		alloc := newUIDAllocator(tx)
		if spooled != 0 {
			if err := execOne(ctx, tx, "DELETE FROM spool WHERE id = ?", spooled); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", spooled); err != nil {
				return err
			}
		}
		added = added[:0]
		for i, d := range dests {
			id := blobs[i]
			if d.MailboxID != 0 {
				uid, err := alloc.take(ctx, d.MailboxID, 0)
				if err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO messages
					(id, mailbox_id, uid, legacy_uid, internal_date, internal_tz, size, flags, pop3_uidl, sha256, message_id)
					VALUES (?, ?, ?, NULL, ?, ?, ?, ?, NULL, ?, ?)`,
					id, d.MailboxID, uid, date.Unix(), offset, bd.size, formatFlags(d.Flags), bd.sum[:], bd.messageID); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, "INSERT INTO message_structures (id, structure) VALUES (?, ?)", id, bd.structure); err != nil {
					return err
				}
				out[i] = Delivered{UID: uid}
				added = append(added, Message{ID: id, MailboxID: d.MailboxID, UID: uid, InternalDate: date.In(zoneFor(offset)), Size: bd.size, Flags: normalizeFlags(d.Flags)})
				continue
			}
			if len(d.To) == 0 {
				return errors.New("a spool destination without recipients")
			}
			rcpts, err := json.Marshal(d.To)
			if err != nil {
				return err
			}
			var account any
			if d.AccountID != 0 {
				account = d.AccountID
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO spool (id, route, account_id, sender, recipients, size, sha256, message_id, structure, received_at, next_attempt_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				id, d.Route, account, from, string(rcpts), bd.size, bd.sum[:], bd.messageID, bd.structure, now.Unix(), now.Unix()); err != nil {
				return err
			}
			out[i] = Delivered{SpoolID: id}
			if d.Route == RouteLegacy {
				if err := recordRelayed(ctx, tx, d.To, now); err != nil {
					return err
				}
			}
		}
		return alloc.flush(ctx)
	})
	if err != nil {
		s.wmu.Unlock()
		return nil, err
	}
	committed = true
	byMailbox := map[int64][]Message{}
	var order []int64
	for _, m := range added {
		if _, ok := byMailbox[m.MailboxID]; !ok {
			order = append(order, m.MailboxID)
		}
		byMailbox[m.MailboxID] = append(byMailbox[m.MailboxID], m)
	}
	for _, mb := range order {
		s.watchers.publish(addedChange(mb, byMailbox[mb], originOf(ctx)))
	}
	s.wmu.Unlock()
	return out, nil
}
