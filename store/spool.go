package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SpoolRoute says what the relay does with a spooled message.
type SpoolRoute string

// The spool routes.
const (
	// RouteLegacy messages are relayed to the legacy server.
	RouteLegacy SpoolRoute = "legacy"
	// RouteHold messages wait for their account's cut-over to end, then
	// are delivered locally.
	RouteHold SpoolRoute = "hold"
	// RouteOutbound messages were submitted by users for other domains;
	// they are relayed to the outbound MTA.
	RouteOutbound SpoolRoute = "outbound"
)

// SpoolEntry is one spooled message.
type SpoolEntry struct {
	ID            int64
	Route         SpoolRoute
	AccountID     int64 // for RouteHold
	From          string
	To            []string
	Size          int64
	MessageID     string
	ReceivedAt    time.Time
	Attempts      int
	NextAttemptAt time.Time
	LastError     string
	// DropRequested: the admin asked for the message to be dropped; the
	// relay queue removes it.
	DropRequested bool
}

// Envelope is an SMTP envelope.
type Envelope struct {
	From string
	To   []string
}

const spoolColumns = "id, route, coalesce(account_id, 0), sender, recipients, size, message_id, received_at, attempts, next_attempt_at, last_error, drop_requested"

func scanSpool(row interface{ Scan(...any) error }) (SpoolEntry, error) {
	var e SpoolEntry
	var rcpts string
	var received, next int64
	if err := row.Scan(&e.ID, &e.Route, &e.AccountID, &e.From, &rcpts, &e.Size, &e.MessageID, &received, &e.Attempts, &next, &e.LastError, &e.DropRequested); err != nil {
		return e, err
	}
	e.ReceivedAt, e.NextAttemptAt = time.Unix(received, 0).UTC(), time.Unix(next, 0).UTC()
	return e, json.Unmarshal([]byte(rcpts), &e.To)
}

// Enqueue spools a message. When it returns without error the message is
// durable (the SMTP server may answer 250). accountID is the held
// account for RouteHold, 0 otherwise.
func (s *Store) Enqueue(ctx context.Context, route SpoolRoute, accountID int64, env Envelope, r io.Reader) (SpoolEntry, error) {
	if len(env.To) == 0 {
		return SpoolEntry{}, errors.New("enqueue: no recipients")
	}
	done, err := s.Deliver(ctx, env.From, []Destination{{Route: route, AccountID: accountID, To: env.To}}, r)
	if err != nil {
		return SpoolEntry{}, fmt.Errorf("enqueue: %w", err)
	}
	return s.SpoolEntryByID(ctx, done[0].SpoolID)
}

// DueSpool returns up to limit messages to relay (legacy and outbound
// routes) whose next attempt is due at now, oldest first.
func (s *Store) DueSpool(ctx context.Context, now time.Time, limit int) ([]SpoolEntry, error) {
	return s.spoolQuery(ctx, "WHERE route IN ('legacy', 'outbound') AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?", now.Unix(), limit)
}

// Held returns the messages held for an account during its cut-over,
// oldest first.
func (s *Store) Held(ctx context.Context, accountID int64) ([]SpoolEntry, error) {
	return s.spoolQuery(ctx, "WHERE route = 'hold' AND account_id = ? ORDER BY id", accountID)
}

// HoldingAccounts returns the accounts that have mail held for them.
func (s *Store) HoldingAccounts(ctx context.Context) (map[int64]bool, error) {
	ids, err := queryAll(ctx, s.read, func(row interface{ Scan(...any) error }) (int64, error) {
		var id int64
		return id, row.Scan(&id)
	}, "SELECT DISTINCT account_id FROM spool WHERE route = 'hold'")
	if err != nil {
		return nil, fmt.Errorf("read spool: %w", err)
	}
	out := make(map[int64]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// CapturedHolding lists the captured accounts that still have held mail
// (held while their cut-over ran, or spooled as held just after it).
func (s *Store) CapturedHolding(ctx context.Context) ([]int64, error) {
	ids, err := queryAll(ctx, s.read, func(row interface{ Scan(...any) error }) (int64, error) {
		var id int64
		return id, row.Scan(&id)
	}, "SELECT DISTINCT sp.account_id FROM spool sp JOIN accounts a ON a.id = sp.account_id WHERE sp.route = 'hold' AND a.state = 'captured'")
	if err != nil {
		return nil, fmt.Errorf("read spool: %w", err)
	}
	return ids, nil
}

// Spooled returns every spooled message, oldest first.
func (s *Store) Spooled(ctx context.Context) ([]SpoolEntry, error) {
	return s.spoolQuery(ctx, "ORDER BY received_at, id")
}

// RequestRetry makes messages to relay due now (all of them when ids
// is empty) and returns how many it changed.
func (s *Store) RequestRetry(ctx context.Context, ids []int64) (int64, error) {
	return s.spoolControl(ctx, "UPDATE spool SET next_attempt_at = ? WHERE route IN ('legacy', 'outbound')", ids, time.Now().Unix())
}

// RequestDrop marks messages to relay to be dropped (the relay queue
// removes them at its next pass, or at the next start) and returns how
// many it marked.
func (s *Store) RequestDrop(ctx context.Context, ids []int64) (int64, error) {
	if len(ids) == 0 {
		return 0, fmt.Errorf("drop: name the messages to drop")
	}
	return s.spoolControl(ctx, "UPDATE spool SET drop_requested = 1, next_attempt_at = ? WHERE route IN ('legacy', 'outbound')", ids, time.Now().Unix())
}

func (s *Store) spoolControl(ctx context.Context, update string, ids []int64, now int64) (int64, error) {
	if s.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	args := []any{now}
	if len(ids) > 0 {
		marks := strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",")
		update += " AND id IN (" + marks + ")"
		for _, id := range ids {
			args = append(args, id)
		}
	}
	var n int64
	err := s.writeTx(context.WithValue(ctx, controlKey{}, true), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, update, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("spool control: %w", err)
	}
	return n, nil
}

// SpoolEntryByID returns one spooled message or ErrNotFound.
func (s *Store) SpoolEntryByID(ctx context.Context, id int64) (SpoolEntry, error) {
	e, err := scanSpool(s.read.QueryRowContext(ctx, "SELECT "+spoolColumns+" FROM spool WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return e, fmt.Errorf("spooled message %d: %w", id, ErrNotFound)
	}
	return e, err
}

func (s *Store) spoolQuery(ctx context.Context, tail string, args ...any) ([]SpoolEntry, error) {
	out, err := queryAll(ctx, s.read, scanSpool, "SELECT "+spoolColumns+" FROM spool "+tail, args...)
	if err != nil {
		return nil, fmt.Errorf("read spool: %w", err)
	}
	return out, nil
}

// OpenSpooled opens a spooled message's body.
func (s *Store) OpenSpooled(id int64) (*os.File, error) {
	f, err := s.openBlob(id)
	if err != nil {
		return nil, fmt.Errorf("open spooled message %d: %w", id, err)
	}
	return f, nil
}

// Defer records a failed delivery attempt: the recipients still to do, the
// next attempt time and the error.
func (s *Store) Defer(ctx context.Context, id int64, remaining []string, next time.Time, lastErr string) error {
	rcpts, err := json.Marshal(remaining)
	if err != nil {
		return err
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE spool SET recipients = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
			string(rcpts), next.Unix(), lastErr, id)
	})
	if err != nil {
		return fmt.Errorf("defer spooled message %d: %w", id, err)
	}
	return nil
}

// HoldSpooled moves recipients of a legacy-route message to the hold
// route of their account (the account went into cut-over, or was cut
// over, before the message reached the legacy server): when they are all
// of its recipients the message itself changes route; otherwise a copy is
// held for them and the message keeps the others. A crash between the two
// steps of a split leaves them on both routes: the held copy is dropped at
// delivery when the mailbox has its Message-ID already.
func (s *Store) HoldSpooled(ctx context.Context, id, accountID int64, rcpts []string) error {
	fail := func(err error) error {
		return fmt.Errorf("hold spooled message %d: %w", id, err)
	}
	entries, err := s.spoolQuery(ctx, "WHERE id = ? AND route = 'legacy'", id)
	if err != nil {
		return fail(err)
	}
	if len(entries) == 0 {
		return fail(ErrNotFound)
	}
	e := entries[0]
	moving := map[string]bool{}
	for _, r := range rcpts {
		moving[r] = true
	}
	var keep []string
	for _, r := range e.To {
		if !moving[r] {
			keep = append(keep, r)
		}
	}
	if len(keep) == 0 {
		err = s.writeTx(ctx, func(tx *sql.Tx) error {
			return execOne(ctx, tx, "UPDATE spool SET route = 'hold', account_id = ? WHERE id = ? AND route = 'legacy'", accountID, id)
		})
		if err != nil {
			return fail(err)
		}
		return s.ClearInFlight(id)
	}
	f, err := s.openBlob(id)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	if _, err := s.Enqueue(ctx, RouteHold, accountID, Envelope{From: e.From, To: rcpts}, f); err != nil {
		return fail(err)
	}
	rest, err := json.Marshal(keep)
	if err != nil {
		return fail(err)
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, "UPDATE spool SET recipients = ? WHERE id = ?", string(rest), id)
	})
	if err != nil {
		return fail(err)
	}
	return nil
}

// Dequeue removes a spooled message (delivered, bounced or dropped).
func (s *Store) Dequeue(ctx context.Context, id int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		if err := execOne(ctx, tx, "DELETE FROM spool WHERE id = ?", id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", id)
		return err
	})
	if err != nil {
		return fmt.Errorf("dequeue spooled message %d: %w", id, err)
	}
	if err := s.unlinkQueued(ctx); err != nil {
		s.log.Error("the file of a delivered spooled message could not be removed", "id", id, "err", err)
	}
	if err := s.ClearInFlight(id); err != nil {
		s.log.Error("the in-flight mark of a delivered spooled message could not be cleared", "id", id, "err", err)
	}
	return nil
}

// MarkInFlight records that spooled message id is being handed to the
// legacy server: until ClearInFlight, an attempt may have delivered it
// without the spool knowing. The mark is a file written without fsync:
// it survives the process being killed at any instant (the kernel keeps
// the write), which is what it is for; after a power loss it may be gone,
// and the message is then sent again.
func (s *Store) MarkInFlight(id int64) error {
	dir := filepath.Join(s.dir, inFlightDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("mark spooled message %d in flight: %w", id, err)
	}
	if err := os.WriteFile(filepath.Join(dir, strconv.FormatInt(id, 10)), nil, 0o640); err != nil {
		return fmt.Errorf("mark spooled message %d in flight: %w", id, err)
	}
	return nil
}

// InFlight reports whether spooled message id carries an in-flight mark:
// an earlier attempt ended without knowing whether the legacy server took
// it (the process was killed, or the connection dropped after the data).
func (s *Store) InFlight(id int64) bool {
	_, err := os.Stat(filepath.Join(s.dir, inFlightDir, strconv.FormatInt(id, 10)))
	return err == nil
}

// ClearInFlight removes the in-flight mark of spooled message id.
func (s *Store) ClearInFlight(id int64) error {
	err := os.Remove(filepath.Join(s.dir, inFlightDir, strconv.FormatInt(id, 10)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("clear the in-flight mark of spooled message %d: %w", id, err)
	}
	return nil
}

// DeliverHeld moves a held message into a mailbox (its body file is reused
// as it is). If the mailbox already holds a message with the same
// Message-ID (brought by the final sync), the held copy is dropped and
// duplicate is true.
func (s *Store) DeliverHeld(ctx context.Context, id, mailboxID int64) (uid uint32, duplicate bool, err error) {
	return s.deliverHeld(ctx, id, mailboxID, nil)
}

// dropHeld removes a held message a script discarded.
func (s *Store) dropHeld(ctx context.Context, id int64) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DELETE FROM spool WHERE id = ? AND route = 'hold'", id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", id)
		return err
	})
	if err != nil {
		return fmt.Errorf("drop held message %d: %w", id, err)
	}
	if err := s.unlinkQueued(ctx); err != nil {
		s.log.Error("the file of a dropped held message could not be removed", "id", id, "err", err)
	}
	return nil
}

func (s *Store) deliverHeld(ctx context.Context, id, mailboxID int64, flags []string) (uid uint32, duplicate bool, err error) {
	var size int64
	var date time.Time
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err = s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		var messageID string
		if err := tx.QueryRowContext(ctx, "SELECT message_id FROM spool WHERE id = ? AND route = 'hold'", id).Scan(&messageID); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return ErrNotFound
			}
			return err
		}
		if messageID != "" {
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM messages WHERE mailbox_id = ? AND message_id = ?", mailboxID, messageID).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				duplicate = true
				if _, err := tx.ExecContext(ctx, "DELETE FROM spool WHERE id = ?", id); err != nil {
					return err
				}
				_, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", id)
				return err
			}
		}
		alloc := newUIDAllocator(tx)
		var err error
		if uid, err = alloc.take(ctx, mailboxID, 0); err != nil {
			return err
		}
		now := time.Now()
		_, offset := now.Zone()
		var receivedAt int64
		if err := tx.QueryRowContext(ctx, "SELECT size, received_at FROM spool WHERE id = ?", id).Scan(&size, &receivedAt); err != nil {
			return err
		}
		date = time.Unix(receivedAt, 0).In(zoneFor(offset))
		if _, err := tx.ExecContext(ctx, `INSERT INTO messages
			(id, mailbox_id, uid, legacy_uid, internal_date, internal_tz, size, flags, pop3_uidl, sha256, message_id)
			SELECT id, ?, ?, NULL, received_at, ?, size, ?, NULL, sha256, message_id FROM spool WHERE id = ?`,
			mailboxID, uid, offset, formatFlags(flags), id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO message_structures (id, structure) SELECT id, structure FROM spool WHERE id = ?", id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM spool WHERE id = ?", id); err != nil {
			return err
		}
		return alloc.flush(ctx)
	})
	if err != nil {
		return 0, false, fmt.Errorf("deliver held message %d: %w", id, err)
	}
	if duplicate {
		if err := s.unlinkQueued(ctx); err != nil {
			s.log.Error("the file of a duplicate held message could not be removed", "id", id, "err", err)
		}
		return 0, true, nil
	}
	s.watchers.publish(addedChange(mailboxID, []Message{{ID: id, MailboxID: mailboxID, UID: uid, InternalDate: date, Size: size, Flags: normalizeFlags(flags)}}, originOf(ctx)))
	return uid, false, nil
}

// ReleaseHeld delivers the mail held for an account into its INBOX (at
// the end of its cut-over); messages the final sync already brought (same
// Message-ID) are dropped.
func (s *Store) ReleaseHeld(ctx context.Context, accountID int64) (delivered int, err error) {
	return s.ReleaseHeldPlaced(ctx, accountID, nil)
}

// Placement is where a released held message goes: a mailbox, with
// flags.
type Placement struct {
	MailboxID int64
	Flags     []string
}

// Placer decides where a held message goes (the account's Sieve
// script): its first placement takes the held message, the others get
// copies; none drops it. nil places everything in INBOX.
type Placer func(ctx context.Context, e SpoolEntry, inbox int64) ([]Placement, error)

// ReleaseHeldPlaced is ReleaseHeld with each message's place decided by
// place.
func (s *Store) ReleaseHeldPlaced(ctx context.Context, accountID int64, place Placer) (delivered int, err error) {
	inbox, err := s.MailboxByName(ctx, accountID, "INBOX")
	if err != nil {
		return 0, err
	}
	held, err := s.Held(ctx, accountID)
	if err != nil {
		return 0, err
	}
	for _, h := range held {
		where := []Placement{{MailboxID: inbox.ID}}
		if place != nil {
			if where, err = place(ctx, h, inbox.ID); err != nil {
				return delivered, err
			}
		}
		if len(where) == 0 {
			if err := s.dropHeld(ctx, h.ID); err != nil {
				return delivered, err
			}
			continue
		}
		if len(where) > 1 {
			// The extra copies first: a crash in between files one twice
			// at worst.
			f, err := s.OpenSpooled(h.ID)
			if err != nil {
				return delivered, err
			}
			var dests []Destination
			for _, w := range where[1:] {
				dests = append(dests, Destination{MailboxID: w.MailboxID, Flags: w.Flags})
			}
			_, err = s.Deliver(ctx, h.From, dests, f)
			f.Close()
			if err != nil {
				return delivered, err
			}
		}
		_, dup, err := s.deliverHeld(ctx, h.ID, where[0].MailboxID, where[0].Flags)
		if errors.Is(err, ErrNotFound) {
			continue // delivered by a release running beside this one
		}
		if err != nil {
			return delivered, err
		}
		if !dup {
			delivered++
		}
	}
	return delivered, nil
}

// SpoolRetries counts spooled messages whose delivery failed at least once
// and returns the error of the most recently failed one.
func (s *Store) SpoolRetries(ctx context.Context) (retrying int64, lastError string, err error) {
	var last sql.NullString
	err = s.read.QueryRowContext(ctx, `SELECT count(*), (SELECT last_error FROM spool WHERE attempts > 0 ORDER BY next_attempt_at DESC LIMIT 1)
		FROM spool WHERE attempts > 0`).Scan(&retrying, &last)
	if err != nil {
		return 0, "", fmt.Errorf("spool retries: %w", err)
	}
	return retrying, last.String, nil
}

// SpoolStats returns the number of spooled messages and when the oldest
// was received (zero if none).
func (s *Store) SpoolStats(ctx context.Context) (count int64, oldest time.Time, err error) {
	var min sql.NullInt64
	if err := s.read.QueryRowContext(ctx, "SELECT count(*), min(received_at) FROM spool").Scan(&count, &min); err != nil {
		return 0, time.Time{}, fmt.Errorf("spool stats: %w", err)
	}
	if min.Valid {
		oldest = time.Unix(min.Int64, 0).UTC()
	}
	return count, oldest, nil
}

// SpoolCounts counts the spool by route: mail for the legacy server, and
// mail held for cut-overs.
func (s *Store) SpoolCounts(ctx context.Context) (legacy, held int64, err error) {
	err = s.read.QueryRowContext(ctx, `SELECT coalesce(sum(route = ?), 0), coalesce(sum(route = ?), 0) FROM spool`,
		RouteLegacy, RouteHold).Scan(&legacy, &held)
	if err != nil {
		return 0, 0, fmt.Errorf("spool counts: %w", err)
	}
	return legacy, held, nil
}
