package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"mailcapture/mimeinfo"
)

// Message is a stored message's metadata.
type Message struct {
	// ID identifies the message and its body file.
	ID           int64
	MailboxID    int64
	UID          uint32
	LegacyUID    uint32 // 0 if delivered locally
	InternalDate time.Time
	Size         int64
	Flags        []string
	POP3UIDL     string // the legacy UIDL, or "" (see UIDL)
	SHA256       [32]byte
	MessageID    string
}

// UIDRange is an inclusive range of UIDs.
type UIDRange struct{ Start, Stop uint32 }

// AllUIDs covers every UID.
var AllUIDs = []UIDRange{{1, 0xffffffff}}

const messageColumns = "id, mailbox_id, uid, coalesce(legacy_uid, 0), internal_date, internal_tz, size, flags, coalesce(pop3_uidl, ''), sha256, message_id"

func scanMessage(row interface{ Scan(...any) error }) (Message, error) {
	var m Message
	var date int64
	var tz int
	var flags string
	var sum []byte
	if err := row.Scan(&m.ID, &m.MailboxID, &m.UID, &m.LegacyUID, &date, &tz, &m.Size, &flags, &m.POP3UIDL, &sum, &m.MessageID); err != nil {
		return Message{}, err
	}
	m.InternalDate = time.Unix(date, 0).In(zoneFor(tz))
	m.Flags = parseFlags(flags)
	copy(m.SHA256[:], sum)
	return m, nil
}

// zones caches the fixed zones of internal dates, by offset in seconds.
var zones sync.Map

func zoneFor(offset int) *time.Location {
	if offset == 0 {
		return time.UTC
	}
	if z, ok := zones.Load(offset); ok {
		return z.(*time.Location)
	}
	z, _ := zones.LoadOrStore(offset, time.FixedZone("", offset))
	return z.(*time.Location)
}

// rangeSQL turns UID ranges into a WHERE fragment and its arguments.
func rangeSQL(ranges []UIDRange) (string, []any) {
	if len(ranges) == 0 {
		return "0", nil
	}
	var parts []string
	var args []any
	for _, r := range ranges {
		lo, hi := min(r.Start, r.Stop), max(r.Start, r.Stop)
		parts = append(parts, "uid BETWEEN ? AND ?")
		args = append(args, lo, hi)
	}
	return "(" + strings.Join(parts, " OR ") + ")", args
}

// MessagesByLegacyUID returns the metadata of the messages of a mailbox
// copied from legacy UIDs lo to hi, by legacy UID.
func (s *Store) MessagesByLegacyUID(ctx context.Context, mailboxID int64, lo, hi uint32) ([]Message, error) {
	out, err := queryAll(ctx, s.read, scanMessage, "SELECT "+messageColumns+
		" FROM messages WHERE mailbox_id = ? AND legacy_uid BETWEEN ? AND ? ORDER BY legacy_uid", mailboxID, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("messages of mailbox %d by legacy UID: %w", mailboxID, err)
	}
	return out, nil
}

// Messages returns the metadata of the messages of a mailbox whose UIDs are
// in ranges, by UID.
func (s *Store) Messages(ctx context.Context, mailboxID int64, ranges []UIDRange) ([]Message, error) {
	where, args := rangeSQL(ranges)
	rows, err := s.read.QueryContext(ctx, "SELECT "+messageColumns+" FROM messages WHERE mailbox_id = ? AND "+where+" ORDER BY uid",
		append([]any{mailboxID}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("messages of mailbox %d: %w", mailboxID, err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("messages of mailbox %d: %w", mailboxID, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// SummariesLocked reads, by UID, what serving a FETCH takes of messages of
// a mailbox: ID, UID, InternalDate, Size and Flags (the other fields are
// left zero). It runs under the writer lock: no commit, and so no change
// hook (OnChange), runs between want, the read and fn. want names the UIDs
// to read (none: fn gets nothing); fn gets the messages. Caches kept up to
// date by a change hook load with it.
func (s *Store) SummariesLocked(ctx context.Context, mailboxID int64, want func() []UIDRange, fn func([]Message)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	ranges := want()
	if len(ranges) == 0 {
		fn(nil)
		return nil
	}
	var all []Message
	for len(ranges) > 0 {
		n := min(len(ranges), 400)
		msgs, err := s.summaries(ctx, s.write, mailboxID, ranges[:n], nil)
		if err != nil {
			return err
		}
		all = append(all, msgs...)
		ranges = ranges[n:]
	}
	fn(all)
	return nil
}

// LoadMailbox calls fn with a mailbox and what serving it takes of each
// of its messages (ID, UID, InternalDate, Size, Flags: messages with the
// same flags share one slice, never to be changed in place), by UID, read under
// the writer lock: no commit, and so no change hook (OnChange), runs
// between the reading and fn, so a cache that fn fills and the hook keeps
// current never misses a change.
func (s *Store) LoadMailbox(ctx context.Context, mailboxID int64, fn func(Mailbox, []Message)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	mb, err := scanMailbox(s.write.QueryRowContext(ctx, "SELECT "+mailboxColumns+" FROM mailboxes WHERE id = ?", mailboxID))
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("mailbox %d: %w", mailboxID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("load mailbox %d: %w", mailboxID, err)
	}
	msgs, err := s.wholeMailbox(ctx, mailboxID)
	if err != nil {
		return fmt.Errorf("load mailbox %d: %w", mailboxID, err)
	}
	fn(mb, msgs)
	return nil
}

// wholeMailbox reads the summaries of every message of a mailbox, by
// UID, counted first so the slice (large at a hundred thousand messages)
// is not copied as it grows.
func (s *Store) wholeMailbox(ctx context.Context, mailboxID int64) ([]Message, error) {
	var n int
	if err := s.write.QueryRowContext(ctx, "SELECT count(*) FROM messages WHERE mailbox_id = ?", mailboxID).Scan(&n); err != nil {
		return nil, err
	}
	return s.summaries(ctx, s.write, mailboxID, AllUIDs, make([]Message, 0, n))
}

// summaries appends to out, by UID, the summaries of the mailbox's
// messages in ranges: ID, UID, InternalDate, Size and Flags.
func (s *Store) summaries(ctx context.Context, db *sql.DB, mailboxID int64, ranges []UIDRange, out []Message) ([]Message, error) {
	where, args := rangeSQL(ranges)
	// A mailbox has few distinct flag sets: each is parsed once, and the
	// messages that have it share its slice (the caches these summaries
	// fill replace a message's flags, never change them in place).
	parsed := map[string][]string{}
	err := queryRaw(ctx, db, "SELECT id, uid, internal_date, internal_tz, size, flags FROM messages WHERE mailbox_id = ? AND "+where+" ORDER BY uid",
		append([]any{mailboxID}, args...), func(v []driver.Value) error {
			var id, uid, date, tz, size int64
			flags, ok := rawText(v[5])
			if !ok || !rawInts(v[:5], &id, &uid, &date, &tz, &size) {
				return fmt.Errorf("message row %v: unexpected column types", v)
			}
			f, seen := parsed[flags]
			if !seen {
				f = parseFlags(flags)
				parsed[flags] = f
			}
			out = append(out, Message{ID: id, MailboxID: mailboxID, UID: uint32(uid),
				InternalDate: time.Unix(date, 0).In(zoneFor(int(tz))), Size: size, Flags: f})
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("messages of mailbox %d: %w", mailboxID, err)
	}
	return out, nil
}

// UIDs returns the mailbox's UIDs in ascending order: sequence number n is
// UIDs[n-1].
func (s *Store) UIDs(ctx context.Context, mailboxID int64) ([]uint32, error) {
	uids, err := queryUIDs(ctx, s.read, "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", mailboxID)
	if err != nil {
		return nil, fmt.Errorf("UIDs of mailbox %d: %w", mailboxID, err)
	}
	return uids, nil
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryUIDs(ctx context.Context, q queryer, query string, args ...any) ([]uint32, error) {
	return queryAll(ctx, q, func(row interface{ Scan(...any) error }) (uint32, error) {
		var uid uint32
		err := row.Scan(&uid)
		return uid, err
	}, query, args...)
}

// Structure returns the cached envelope and MIME structure of a message.
// A structure cached by an older mimeinfo.Version is parsed again from the
// body (and the row updated with the next write); a message deleted while
// its body is pinned (PinBodies) is parsed from its body.
func (s *Store) Structure(ctx context.Context, messageID int64) (*mimeinfo.Message, error) {
	var raw []byte
	err := s.read.QueryRowContext(ctx, "SELECT structure FROM message_structures WHERE id = ?", messageID).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		m, perr := s.parseBody(messageID)
		if perr != nil {
			return nil, fmt.Errorf("message %d: %w", messageID, ErrNotFound)
		}
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("message %d: %w", messageID, err)
	}
	var m mimeinfo.Message
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("message %d: cached structure: %w", messageID, err)
	}
	if m.V < mimeinfo.Version {
		fresh, err := s.parseBody(messageID)
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", messageID, err)
		}
		if js, err := json.Marshal(fresh); err == nil {
			s.restructured.put(messageID, js)
		}
		return fresh, nil
	}
	return &m, nil
}

// parseBody parses a stored body.
func (s *Store) parseBody(messageID int64) (*mimeinfo.Message, error) {
	f, err := s.OpenBody(messageID)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return mimeinfo.Parse(f)
}

// restructured holds structures parsed again (see Structure) until a
// write transaction stores them.
type restructured struct {
	mu      sync.Mutex
	pending map[int64][]byte
}

func (r *restructured) put(id int64, js []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = map[int64][]byte{}
	}
	if len(r.pending) < 100000 {
		r.pending[id] = js
	}
}

func (r *restructured) take() map[int64][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.pending
	r.pending = nil
	return out
}

// Body is a stored message body open for reading: a file of its own, or
// its stretch of the pack file its batch wrote. Bodies are immutable.
type Body struct {
	r *io.SectionReader // over a file of its own: up to the file's end
	f *os.File
}

func newBody(f *os.File, offset, size int64) *Body {
	return &Body{r: io.NewSectionReader(f, offset, size), f: f}
}

// Read reads the body from where the last Read ended.
func (b *Body) Read(p []byte) (int, error) { return b.r.Read(p) }

// ReadAt reads the body's bytes from off on.
func (b *Body) ReadAt(p []byte, off int64) (int, error) { return b.r.ReadAt(p, off) }

// Close closes the body's file.
func (b *Body) Close() error { return b.f.Close() }

// Location tells where the body's bytes lie: the file and the offset of
// the first byte in it.
func (b *Body) Location() (path string, offset int64) {
	_, offset, _ = b.r.Outer()
	return b.f.Name(), offset
}

// OpenBody opens a stored message body for reading.
func (s *Store) OpenBody(messageID int64) (*Body, error) {
	at, packed := s.packs.find(messageID)
	if !packed {
		f, err := s.openBlob(messageID)
		if err == nil {
			return newBody(f, 0, math.MaxInt64), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open body of message %d: %w", messageID, err)
		}
		if at, packed, err = s.loadPack(messageID); err != nil {
			return nil, fmt.Errorf("open body of message %d: %w", messageID, err)
		}
		if !packed {
			return nil, fmt.Errorf("open body of message %d: %w", messageID, os.ErrNotExist)
		}
	}
	pf, err := s.openBlob(at.pack)
	if err != nil {
		return nil, fmt.Errorf("open body of message %d in pack %d: %w", messageID, at.pack, err)
	}
	return newBody(pf, at.offset, at.size), nil
}

// loadPack reads where every body of the pack holding id lies into the
// pack index: the bodies of a batch are mostly read together (a FETCH of
// a range, a POP3 download), one query serves them all.
func (s *Store) loadPack(id int64) (packedAt, bool, error) {
	rows, err := s.read.Query("SELECT id, pack, offset, size FROM packed_bodies WHERE pack = (SELECT pack FROM packed_bodies WHERE id = ?)", id)
	if err != nil {
		return packedAt{}, false, err
	}
	defer rows.Close()
	var pack int64
	var ids []int64
	var ats []packedAt
	for rows.Next() {
		var body int64
		var at packedAt
		if err := rows.Scan(&body, &at.pack, &at.offset, &at.size); err != nil {
			return packedAt{}, false, err
		}
		pack = at.pack
		ids, ats = append(ids, body), append(ats, at)
	}
	if err := rows.Err(); err != nil {
		return packedAt{}, false, err
	}
	if len(ids) == 0 {
		return packedAt{}, false, nil
	}
	s.packs.add(pack, ids, ats)
	if i := slices.Index(ids, id); i >= 0 {
		return ats[i], true, nil
	}
	return packedAt{}, false, nil
}

// FlagOp says how StoreFlags combines flags.
type FlagOp int

// The IMAP STORE operations.
const (
	FlagsAdd FlagOp = iota
	FlagsRemove
	FlagsReplace
)

// FlagUpdate is one message whose flags changed.
type FlagUpdate struct {
	UID   uint32
	Flags []string
}

// StoreFlags changes the flags of the messages in ranges and returns those
// whose flags actually changed, with their new flags.
func (s *Store) StoreFlags(ctx context.Context, mailboxID int64, ranges []UIDRange, op FlagOp, flags []string) ([]FlagUpdate, error) {
	var updates []FlagUpdate
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// Flags are not mail: their commit is not flushed by itself (a power
	// loss may lose the last changes, as with Dovecot's index).
	err := s.writeTxSync(ctx, false, func(tx *sql.Tx) error {
		type row struct {
			uid   uint32
			flags string
		}
		var current []row
		// Bounded statements: SQLite limits a statement's expression depth.
		for rest := ranges; len(rest) > 0; {
			chunk := rest[:min(len(rest), 400)]
			rest = rest[len(chunk):]
			where, args := rangeSQL(chunk)
			rows, err := tx.QueryContext(ctx, "SELECT uid, flags FROM messages WHERE mailbox_id = ? AND "+where+" ORDER BY uid",
				append([]any{mailboxID}, args...)...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.uid, &r.flags); err != nil {
					rows.Close()
					return err
				}
				current = append(current, r)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		var err error
		var update *sql.Stmt
		for _, r := range current {
			next := applyFlags(parseFlags(r.flags), op, flags)
			formatted := formatFlags(next)
			if formatted == r.flags {
				continue
			}
			if update == nil {
				if update, err = tx.PrepareContext(ctx, "UPDATE messages SET flags = ? WHERE mailbox_id = ? AND uid = ?"); err != nil {
					return err
				}
				defer update.Close()
			}
			if _, err := update.ExecContext(ctx, formatted, mailboxID, r.uid); err != nil {
				return err
			}
			updates = append(updates, FlagUpdate{UID: r.uid, Flags: next})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store flags in mailbox %d: %w", mailboxID, err)
	}
	if len(updates) > 0 {
		s.watchers.publish(Change{MailboxID: mailboxID, Kind: FlagsChanged, Flags: updates, Origin: originOf(ctx)})
	}
	return updates, nil
}

// Expunge deletes the messages of a mailbox whose UIDs are listed and
// returns the UIDs deleted. IMAP EXPUNGE passes the \Deleted ones (see
// Search), POP3 QUIT the ones marked with DELE.
func (s *Store) Expunge(ctx context.Context, mailboxID int64, uids []uint32) ([]uint32, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var gone []uint32
	err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		var err error
		gone, err = expungeTx(ctx, tx, mailboxID, uids)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("expunge in mailbox %d: %w", mailboxID, err)
	}
	s.afterExpunge(ctx, mailboxID, gone)
	return gone, nil
}

func expungeTx(ctx context.Context, tx *sql.Tx, mailboxID int64, uids []uint32) ([]uint32, error) {
	var gone []uint32
	for _, uid := range uids {
		var id int64
		err := tx.QueryRowContext(ctx, "DELETE FROM messages WHERE mailbox_id = ? AND uid = ? RETURNING id", mailboxID, uid).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO unlink_queue (blob_id) VALUES (?)", id); err != nil {
			return nil, err
		}
		gone = append(gone, uid)
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i] < gone[j] })
	return gone, nil
}

// afterExpunge notifies and unlinks; called with wmu held after commit.
func (s *Store) afterExpunge(ctx context.Context, mailboxID int64, gone []uint32) {
	if len(gone) == 0 {
		return
	}
	s.watchers.publish(Change{MailboxID: mailboxID, Kind: MessagesExpunged, UIDs: gone})
	if err := s.unlinkQueued(ctx); err != nil {
		// The queue is retried at the next Open; the rows are gone already.
		s.log.Error("the body files of expunged messages could not be removed", "mailbox", mailboxID, "err", err)
	}
}

// CopyResult maps a source UID to the UID of its copy (RFC 4315 COPYUID).
type CopyResult struct {
	SourceUIDs []uint32
	DestUIDs   []uint32
	// DestUIDValidity is the destination mailbox's UIDVALIDITY.
	DestUIDValidity uint32
}

// Copy copies messages to another mailbox with fresh UIDs. Bodies are hard
// links of the originals: no bytes are copied.
func (s *Store) Copy(ctx context.Context, srcMailbox int64, uids []uint32, dstMailbox int64) (CopyResult, error) {
	return s.copyOrMove(ctx, srcMailbox, uids, dstMailbox, false)
}

// Move moves messages to another mailbox (RFC 6851): copy and expunge in
// one transaction.
func (s *Store) Move(ctx context.Context, srcMailbox int64, uids []uint32, dstMailbox int64) (CopyResult, error) {
	return s.copyOrMove(ctx, srcMailbox, uids, dstMailbox, true)
}

func (s *Store) copyOrMove(ctx context.Context, src int64, uids []uint32, dst int64, move bool) (CopyResult, error) {
	var res CopyResult
	what := "copy"
	if move {
		what = "move"
	}
	srcMsgs, err := s.messagesByUID(ctx, src, uids)
	if err != nil {
		return res, fmt.Errorf("%s from mailbox %d: %w", what, src, err)
	}
	if len(srcMsgs) == 0 {
		return res, nil
	}
	// Link the bodies under new ids (taken before the writer lock, as
	// always).
	var newIDs []int64
	var inPack []bool // the body is shared in its pack, not linked
	committed := false
	ids := idSource{alloc: &s.ids}
	defer func() {
		if !committed {
			s.removeBlobs(newIDs)
		}
		ids.release()
	}()
	for _, m := range srcMsgs {
		id, err := ids.take(ctx)
		if err != nil {
			return res, fmt.Errorf("%s: %w", what, err)
		}
		newIDs = append(newIDs, id)
		err = s.linkBlob(m.ID, id)
		inPack = append(inPack, errors.Is(err, errPackedBody))
		if err != nil && !inPack[len(inPack)-1] {
			return res, fmt.Errorf("%s message %d: %w", what, m.UID, err)
		}
	}
	if err := s.syncBodies(); err != nil {
		return res, fmt.Errorf("%s: sync: %w", what, err)
	}
	var gone []uint32
	s.wmu.Lock()
	defer s.wmu.Unlock() // runs before the release above
	err = s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		res = CopyResult{}
		if err := tx.QueryRowContext(ctx, "SELECT uidvalidity FROM mailboxes WHERE id = ?", dst).Scan(&res.DestUIDValidity); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("destination mailbox %d: %w", dst, ErrNotFound)
			}
			return err
		}
		alloc := newUIDAllocator(tx)
		for i, m := range srcMsgs {
			uid, err := alloc.take(ctx, dst, 0)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO messages
				(id, mailbox_id, uid, legacy_uid, internal_date, internal_tz, size, flags, pop3_uidl, sha256, message_id)
				SELECT ?, ?, ?, NULL, internal_date, internal_tz, size, flags, NULL, sha256, message_id
				FROM messages WHERE id = ?`, newIDs[i], dst, uid, m.ID)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, "INSERT INTO message_structures (id, structure) SELECT ?, structure FROM message_structures WHERE id = ?", newIDs[i], m.ID)
			if err != nil {
				return err
			}
			if inPack[i] {
				if err := sharePacked(ctx, tx, m.ID, newIDs[i]); err != nil {
					return err
				}
			}
			res.SourceUIDs = append(res.SourceUIDs, m.UID)
			res.DestUIDs = append(res.DestUIDs, uid)
		}
		if err := alloc.flush(ctx); err != nil {
			return err
		}
		if move {
			var err error
			gone, err = expungeTx(ctx, tx, src, res.SourceUIDs)
			return err
		}
		return nil
	})
	if err != nil {
		return CopyResult{}, fmt.Errorf("%s from mailbox %d to %d: %w", what, src, dst, err)
	}
	committed = true
	added := make([]Message, len(srcMsgs))
	for i, m := range srcMsgs {
		added[i] = Message{ID: newIDs[i], MailboxID: dst, UID: res.DestUIDs[i], InternalDate: m.InternalDate, Size: m.Size, Flags: m.Flags}
	}
	s.watchers.publish(addedChange(dst, added, originOf(ctx)))
	s.afterExpunge(ctx, src, gone)
	return res, nil
}

func (s *Store) messagesByUID(ctx context.Context, mailboxID int64, uids []uint32) ([]Message, error) {
	ranges := make([]UIDRange, len(uids))
	for i, u := range uids {
		ranges[i] = UIDRange{u, u}
	}
	var out []Message
	// Bounded statements: SQLite limits the number of parameters.
	for len(ranges) > 0 {
		n := min(len(ranges), 400)
		part, err := s.Messages(ctx, mailboxID, ranges[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, part...)
		ranges = ranges[n:]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out, nil
}

// ReadBody returns a whole body; for tests and small messages only.
func (s *Store) ReadBody(messageID int64) ([]byte, error) {
	f, err := s.OpenBody(messageID)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// errPackedBody says that a body to be linked has no file of its own: it
// may be in a pack, where the copy shares its stretch (see sharePacked).
var errPackedBody = errors.New("body has no file of its own")

// linkBlob makes the body of id dst a hard link of the body of src; it
// returns errPackedBody when src has no file to link.
func (s *Store) linkBlob(src, dst int64) error {
	err := os.Link(s.blobPath(src), s.blobPath(dst))
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(s.blobPath(dst)), 0o750); err != nil {
			return err
		}
		err = os.Link(s.blobPath(src), s.blobPath(dst))
		if errors.Is(err, os.ErrNotExist) {
			return errPackedBody
		}
	}
	return err
}

// sharePacked gives the body id dst the pack stretch of src, in the
// transaction that inserted dst's message (if it did: a source deleted
// meanwhile gives no copy, and no row that would keep its pack);
// ErrNotFound if src is in no pack either.
func sharePacked(ctx context.Context, tx *sql.Tx, src, dst int64) error {
	res, err := tx.ExecContext(ctx, `INSERT INTO packed_bodies (id, pack, offset, size)
		SELECT ?, pack, offset, size FROM packed_bodies WHERE id = ? AND EXISTS (SELECT 1 FROM messages WHERE id = ?)`, dst, src, dst)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil || n > 0 {
		return err
	}
	var copied bool
	if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM messages WHERE id = ?)", dst).Scan(&copied); err != nil {
		return err
	}
	if copied {
		return fmt.Errorf("body %d: %w", src, ErrNotFound)
	}
	return nil
}
