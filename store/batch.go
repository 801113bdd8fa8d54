package store

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/mail"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"mailcapture/mimeinfo"
)

// NewMessage describes a message to insert.
type NewMessage struct {
	MailboxID int64
	// UID is the UID to give; 0 takes the mailbox's UIDNEXT. The capture
	// engine passes the legacy UID so clients see the same UIDs.
	UID uint32
	// LegacyUID is the legacy UID this copy came from; 0 if none. A second
	// insert with the same (mailbox, LegacyUID) is a no-op: captures can be
	// re-run and resumed without storing a message twice.
	LegacyUID uint32
	// InternalDate is the IMAP internal date; zero takes the message's
	// Date header, or the time of the commit if it has none.
	InternalDate time.Time
	Flags        []string
	// POP3UIDL is the legacy server's UIDL for this message; empty means
	// one is derived from UIDVALIDITY and UID. Like LegacyUID, a second
	// insert with the same (mailbox, POP3UIDL) is a no-op.
	POP3UIDL string

	// origin is the Change origin of the caller that added it.
	origin any
}

// Inserted tells what became of one message of a committed batch.
type Inserted struct {
	// UID is the message's UID in its mailbox.
	UID uint32
	// Duplicate is true when (mailbox, legacy UID) was already stored; the
	// new copy was discarded.
	Duplicate bool
	Size      int64
	SHA256    [32]byte
}

// body is a message body written but not yet committed.
type body struct {
	id int64
	// pack is the blob id of the pack file holding the body at offset;
	// 0 for a body in a file of its own.
	pack, offset int64
	size         int64
	sum          [32]byte
	messageID    string
	// dateHeader is the Date header as written; it is parsed only for
	// a message given no internal date (parsing costs more than the rest
	// of a small message's bookkeeping).
	dateHeader string
	structure  []byte
	trace      []string // the delivery trace addresses at the top of the header
}

// writeBody streams r into a new body file named by an id from src,
// hashing and parsing it on the way, so memory stays flat whatever the
// message size. The file is not yet synced; src stays in flight until the
// caller releases it.
func (s *Store) writeBody(ctx context.Context, src *idSource, r io.Reader) (body, error) {
	if s.opts.ReadOnly {
		return body{}, ErrReadOnly
	}
	id, err := src.take(ctx)
	if err != nil {
		return body{}, err
	}
	f, err := s.createBlob(id)
	if err != nil {
		return body{}, fmt.Errorf("write body: %w", err)
	}
	b, err := fillBody(ctx, f, r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return body{}, fmt.Errorf("write body: %w", err)
	}
	b.id = id
	return b, nil
}

// headerDate is the time of the Date header; zero if none or unreadable.
func (b body) headerDate() time.Time {
	if d, err := mail.ParseDate(b.dateHeader); err == nil {
		return d
	}
	return time.Time{}
}

// sinkBuffers gather a body's bytes on their way to its file: the
// connection hands them over in whatever pieces the network gave, and a
// write(2) per piece costs more than the copy.
var sinkBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

func fillBody(ctx context.Context, f io.Writer, r io.Reader) (body, error) {
	buf := sinkBuffers.Get().(*bufio.Writer)
	buf.Reset(f)
	defer func() {
		buf.Reset(nil)
		sinkBuffers.Put(buf)
	}()
	w := &bodySink{file: buf, hash: sha256.New()}
	src := io.TeeReader(&ctxReader{ctx: ctx, r: r}, w)
	parsed, err := mimeinfo.Parse(src)
	if err != nil {
		return body{}, err
	}
	// Parse reads to the end; drain anyway so the file is always whole.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return body{}, err
	}
	if err := buf.Flush(); err != nil {
		return body{}, err
	}
	structure, err := json.Marshal(parsed)
	if err != nil {
		return body{}, err
	}
	b := body{size: w.n, messageID: parsed.Envelope.MessageID, structure: structure, trace: parsed.Trace, dateHeader: parsed.Envelope.Date}
	w.hash.Sum(b.sum[:0])
	return b, nil
}

// bodySink writes a body to its file and hashes it.
type bodySink struct {
	file io.Writer
	hash hash.Hash
	n    int64
}

func (w *bodySink) Write(p []byte) (int, error) {
	n, err := w.file.Write(p)
	w.hash.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// ctxReader stops a long body copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Batch inserts many messages with one filesystem sync and one transaction.
// Nothing is visible or durable before Commit; Abort (or a crash) leaves no
// trace. A Batch is used by one goroutine.
type Batch struct {
	store  *Store
	ids    idSource
	items  []NewMessage
	bodies []body
	bytes  int64
	done   bool
	// packed: the bodies go into one pack file (pack, once the first is
	// added) instead of a file each.
	packed bool
	pack   *packWriter
}

// packWriter appends a batch's bodies to its pack file.
type packWriter struct {
	id  int64 // the pack's blob id
	f   *os.File
	end int64 // where the next body goes
}

// NewBatch starts a batch; its bodies share one pack file.
func (s *Store) NewBatch() *Batch { return s.newBatch(true) }

// newBatch starts a batch whose bodies share a pack file when packed, or
// get a file each.
func (s *Store) newBatch(packed bool) *Batch {
	return &Batch{store: s, ids: idSource{alloc: &s.ids}, packed: packed}
}

// Add streams one message body into the batch.
func (b *Batch) Add(ctx context.Context, m NewMessage, r io.Reader) error {
	if b.done {
		return errors.New("batch already committed or aborted")
	}
	var bd body
	var err error
	if b.packed {
		bd, err = b.addToPack(ctx, r)
	} else {
		bd, err = b.store.writeBody(ctx, &b.ids, r)
	}
	if err != nil {
		return err
	}
	b.items = append(b.items, m)
	b.bodies = append(b.bodies, bd)
	b.bytes += bd.size
	return nil
}

// addToPack streams r to the end of the batch's pack file, creating the
// pack with the first body. A body that fails half-way is cut off again,
// so the pack holds whole bodies only.
func (b *Batch) addToPack(ctx context.Context, r io.Reader) (body, error) {
	s := b.store
	if s.opts.ReadOnly {
		return body{}, ErrReadOnly
	}
	if b.pack == nil {
		id, err := b.ids.take(ctx)
		if err != nil {
			return body{}, err
		}
		f, err := s.createBlob(id)
		if err != nil {
			return body{}, fmt.Errorf("create pack: %w", err)
		}
		b.pack = &packWriter{id: id, f: f}
	}
	id, err := b.ids.take(ctx)
	if err != nil {
		return body{}, err
	}
	p := b.pack
	bd, err := fillBody(ctx, io.NewOffsetWriter(p.f, p.end), r)
	if err != nil {
		if terr := p.f.Truncate(p.end); terr != nil {
			err = errors.Join(err, fmt.Errorf("cut the pack back: %w", terr))
		}
		return body{}, fmt.Errorf("write body: %w", err)
	}
	bd.id, bd.pack, bd.offset = id, p.id, p.end
	p.end += bd.size
	return bd, nil
}

// Len returns the number of messages added.
func (b *Batch) Len() int { return len(b.items) }

// Bytes returns the total size of the bodies added.
func (b *Batch) Bytes() int64 { return b.bytes }

// Abort discards the batch.
func (b *Batch) Abort() {
	if b.done {
		return
	}
	b.done = true
	b.release(nil)
}

// release removes the files of bodies not in committed, and the pack if
// none of its bodies is, and settles every id of the batch.
func (b *Batch) release(committed map[int64]bool) {
	var drop []int64
	packUsed := false
	for _, bd := range b.bodies {
		switch {
		case committed[bd.id]:
			packUsed = packUsed || bd.pack != 0
		case bd.pack == 0:
			drop = append(drop, bd.id)
		}
	}
	if b.pack != nil {
		if err := b.pack.f.Close(); err != nil {
			b.store.log.Error("a pack file could not be closed", "blob", b.pack.id, "err", err)
		}
		if !packUsed {
			drop = append(drop, b.pack.id)
		}
	}
	b.store.removeBlobs(drop)
	b.ids.release()
}

// Commit makes the batch durable and visible, and returns one Inserted per
// message, in the order added. On error nothing of the batch is stored.
func (b *Batch) Commit(ctx context.Context) ([]Inserted, error) {
	if b.done {
		return nil, errors.New("batch already committed or aborted")
	}
	b.done = true
	committed := map[int64]bool{}
	// Removes the files of duplicates and of a failed commit.
	defer func() { b.release(committed) }()
	if len(b.items) == 0 {
		return nil, nil
	}
	return b.store.commitItems(ctx, b.items, b.bodies, committed)
}

// commitItems makes bodies already written durable (one filesystem sync)
// and inserts their rows in one transaction; the ids of the bodies placed
// are added to committed.
func (s *Store) commitItems(ctx context.Context, items []NewMessage, bodies []body, committed map[int64]bool) ([]Inserted, error) {
	if err := s.syncBodies(); err != nil {
		return nil, fmt.Errorf("commit batch: sync bodies: %w", err)
	}
	out := make([]Inserted, len(items))
	var placed []int64
	type changeKey struct {
		mailbox int64
		origin  any
	}
	changes := map[changeKey][]Message{}
	var order []changeKey

	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO messages
			(id, mailbox_id, uid, legacy_uid, internal_date, internal_tz, size, flags, pop3_uidl, sha256, message_id)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		insStructure, err := tx.PrepareContext(ctx, "INSERT INTO message_structures (id, structure) VALUES (?, ?)")
		if err != nil {
			return err
		}
		defer insStructure.Close()
		var packed []body
		alloc := newUIDAllocator(tx)
		copies, err := newCopyFinder(ctx, tx, items)
		if err != nil {
			return err
		}
		inboxes := traceRecorder{}
		for i, m := range items {
			bd := bodies[i]
			out[i].Size, out[i].SHA256 = bd.size, bd.sum
			if m.LegacyUID != 0 || m.POP3UIDL != "" {
				if uid, found := copies.find(m.MailboxID, m.LegacyUID, m.POP3UIDL); found {
					out[i].UID, out[i].Duplicate = uid, true
					continue
				}
			}
			uid, err := alloc.take(ctx, m.MailboxID, m.UID)
			if err != nil {
				return err
			}
			date := m.InternalDate
			if date.IsZero() {
				date = bd.headerDate()
			}
			if date.IsZero() {
				date = time.Now()
			}
			_, offset := date.Zone()
			_, err = ins.ExecContext(ctx, bd.id, m.MailboxID, uid, nullUID(m.LegacyUID), date.Unix(), offset, bd.size,
				formatFlags(m.Flags), nullString(m.POP3UIDL), bd.sum[:], bd.messageID)
			if err != nil {
				if isUniqueViolation(err) {
					return fmt.Errorf("UID %d already used in mailbox %d: %w", uid, m.MailboxID, ErrExists)
				}
				return err
			}
			if _, err := insStructure.ExecContext(ctx, bd.id, bd.structure); err != nil {
				return err
			}
			if bd.pack != 0 {
				packed = append(packed, bd)
			}
			out[i].UID = uid
			copies.stored(m.MailboxID, m.LegacyUID, m.POP3UIDL, uid)
			placed = append(placed, bd.id)
			if len(bd.trace) > 0 && (m.LegacyUID != 0 || m.POP3UIDL != "") && time.Since(date) < traceWindow {
				if err := inboxes.record(ctx, tx, m.MailboxID, bd.trace, date); err != nil {
					return err
				}
			}
			key := changeKey{m.MailboxID, m.origin}
			if _, ok := changes[key]; !ok {
				order = append(order, key)
			}
			changes[key] = append(changes[key], Message{ID: bd.id, MailboxID: m.MailboxID, UID: uid,
				InternalDate: time.Unix(date.Unix(), 0).In(zoneFor(offset)), Size: bd.size, Flags: normalizeFlags(m.Flags)})
		}
		if err := insertPacked(ctx, tx, packed); err != nil {
			return err
		}
		return alloc.flush(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("commit batch: %w", err)
	}
	for _, id := range placed {
		committed[id] = true
	}
	for _, key := range order {
		s.watchers.publish(addedChange(key.mailbox, changes[key], key.origin))
	}
	return out, nil
}

// insertPacked records where in their packs the bodies are, a few hundred
// rows a statement.
func insertPacked(ctx context.Context, tx *sql.Tx, bodies []body) error {
	for len(bodies) > 0 {
		n := min(len(bodies), 200)
		args := make([]any, 0, 4*n)
		for _, bd := range bodies[:n] {
			args = append(args, bd.id, bd.pack, bd.offset, bd.size)
		}
		q := "INSERT INTO packed_bodies (id, pack, offset, size) VALUES " + strings.Repeat("(?, ?, ?, ?), ", n-1) + "(?, ?, ?, ?)"
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("record packed bodies: %w", err)
		}
		bodies = bodies[n:]
	}
	return nil
}

// traceRecorder records the trace addresses of legacy messages copied
// into INBOXes, knowing which mailboxes are INBOXes.
type traceRecorder map[int64]int64 // mailbox → its account, or 0 if not an INBOX

func (r traceRecorder) record(ctx context.Context, tx *sql.Tx, mailboxID int64, trace []string, date time.Time) error {
	account, ok := r[mailboxID]
	if !ok {
		var name string
		if err := tx.QueryRowContext(ctx, "SELECT account_id, name FROM mailboxes WHERE id = ?", mailboxID).Scan(&account, &name); err != nil {
			return fmt.Errorf("mailbox %d: %w", mailboxID, err)
		}
		if !strings.EqualFold(name, "INBOX") {
			account = 0
		}
		r[mailboxID] = account
	}
	if account == 0 {
		return nil
	}
	return recordTrace(ctx, tx, account, trace, date)
}

// addedChange describes messages added to a mailbox, sorted by UID.
func addedChange(mailboxID int64, added []Message, origin any) Change {
	sort.Slice(added, func(i, j int) bool { return added[i].UID < added[j].UID })
	uids := make([]uint32, len(added))
	for i, m := range added {
		uids[i] = m.UID
	}
	return Change{MailboxID: mailboxID, Kind: MessagesAdded, UIDs: uids, Added: added, Origin: origin}
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullUID(uid uint32) any {
	if uid == 0 {
		return nil
	}
	return uid
}

// copyFinder finds a message already stored from the same legacy
// message (by legacy UID, else by POP3 UIDL), so a batch replayed after a
// crash stores nothing twice. The batch's legacy UIDs and UIDLs are looked
// up together, a few hundred per query.
type copyFinder struct {
	byUID  map[int64]map[uint32]uint32 // mailbox id -> legacy UID -> local UID
	byUIDL map[int64]map[string]uint32 // mailbox id -> POP3 UIDL -> local UID
}

// copyLookupChunk bounds the legacy UIDs or UIDLs one lookup query names.
const copyLookupChunk = 500

// newCopyFinder loads the local copies of the batch's legacy UIDs and
// UIDLs.
func newCopyFinder(ctx context.Context, tx *sql.Tx, items []NewMessage) (*copyFinder, error) {
	uids, uidls := map[int64][]any{}, map[int64][]any{}
	for _, m := range items {
		if m.LegacyUID != 0 {
			uids[m.MailboxID] = append(uids[m.MailboxID], m.LegacyUID)
		}
		if m.POP3UIDL != "" {
			uidls[m.MailboxID] = append(uidls[m.MailboxID], m.POP3UIDL)
		}
	}
	f := &copyFinder{byUID: map[int64]map[uint32]uint32{}, byUIDL: map[int64]map[string]uint32{}}
	for mailboxID, keys := range uids {
		found, err := lookupCopies[uint32](ctx, tx, "legacy_uid", mailboxID, keys)
		if err != nil {
			return nil, err
		}
		f.byUID[mailboxID] = found
	}
	for mailboxID, keys := range uidls {
		found, err := lookupCopies[string](ctx, tx, "pop3_uidl", mailboxID, keys)
		if err != nil {
			return nil, err
		}
		f.byUIDL[mailboxID] = found
	}
	return f, nil
}

// lookupCopies maps each of keys that the mailbox's messages have in
// column (legacy_uid or pop3_uidl) to the local UID, a chunk of keys per
// query.
func lookupCopies[K comparable](ctx context.Context, tx *sql.Tx, column string, mailboxID int64, keys []any) (map[K]uint32, error) {
	type row struct {
		key K
		uid uint32
	}
	scan := func(r interface{ Scan(...any) error }) (row, error) {
		var out row
		return out, r.Scan(&out.key, &out.uid)
	}
	found := map[K]uint32{}
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), copyLookupChunk)]
		keys = keys[len(chunk):]
		rows, err := queryAll(ctx, tx, scan, "SELECT "+column+", uid FROM messages WHERE mailbox_id = ? AND "+column+" IN ("+
			placeholders(len(chunk))+")", append([]any{mailboxID}, chunk...)...)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			found[r.key] = r.uid
		}
	}
	return found, nil
}

// find returns the local UID of the stored copy, if there is one.
func (f *copyFinder) find(mailboxID int64, legacyUID uint32, uidl string) (uint32, bool) {
	if uid, ok := f.byUID[mailboxID][legacyUID]; ok && legacyUID != 0 {
		return uid, true
	}
	if uid, ok := f.byUIDL[mailboxID][uidl]; ok && uidl != "" {
		return uid, true
	}
	return 0, false
}

// stored records a copy placed by this transaction, so a later item of the
// same batch for the same legacy message is found too.
func (f *copyFinder) stored(mailboxID int64, legacyUID uint32, uidl string, uid uint32) {
	if legacyUID != 0 {
		if f.byUID[mailboxID] == nil {
			f.byUID[mailboxID] = map[uint32]uint32{}
		}
		f.byUID[mailboxID][legacyUID] = uid
	}
	if uidl != "" {
		if f.byUIDL[mailboxID] == nil {
			f.byUIDL[mailboxID] = map[string]uint32{}
		}
		f.byUIDL[mailboxID][uidl] = uid
	}
}

// uidAllocator hands out UIDs within one transaction and writes each
// touched mailbox's UIDNEXT once at the end.
type uidAllocator struct {
	tx   *sql.Tx
	next map[int64]uint32
}

func newUIDAllocator(tx *sql.Tx) *uidAllocator {
	return &uidAllocator{tx: tx, next: map[int64]uint32{}}
}

// take returns want if non-zero (raising UIDNEXT past it), else UIDNEXT.
func (a *uidAllocator) take(ctx context.Context, mailboxID int64, want uint32) (uint32, error) {
	next, ok := a.next[mailboxID]
	if !ok {
		if err := a.tx.QueryRowContext(ctx, "SELECT uidnext FROM mailboxes WHERE id = ?", mailboxID).Scan(&next); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return 0, fmt.Errorf("mailbox %d: %w", mailboxID, ErrNotFound)
			}
			return 0, err
		}
	}
	uid := want
	if uid == 0 {
		uid = next
	}
	if uid == 0xffffffff {
		return 0, fmt.Errorf("mailbox %d: UIDs exhausted", mailboxID)
	}
	a.next[mailboxID] = max(next, uid+1)
	return uid, nil
}

func (a *uidAllocator) flush(ctx context.Context) error {
	for id, next := range a.next {
		if _, err := a.tx.ExecContext(ctx, "UPDATE mailboxes SET uidnext = max(uidnext, ?) WHERE id = ?", next, id); err != nil {
			return err
		}
	}
	return nil
}

// Append stores one message in a mailbox with the next UID (IMAP APPEND,
// local delivery) and returns its UID once it is durable.
func (s *Store) Append(ctx context.Context, mailboxID int64, r io.Reader, flags []string, date time.Time) (Inserted, error) {
	// A body of its own: a pack of one would cost a file and a row.
	b := s.newBatch(false)
	if err := b.Add(ctx, NewMessage{MailboxID: mailboxID, InternalDate: date, Flags: flags, origin: originOf(ctx)}, r); err != nil {
		b.Abort()
		return Inserted{}, fmt.Errorf("append to mailbox %d: %w", mailboxID, err)
	}
	res, err := s.groupCommit(ctx, b)
	if err != nil {
		return Inserted{}, fmt.Errorf("append to mailbox %d: %w", mailboxID, err)
	}
	return res, nil
}

// appendGroup gathers single-message appends that arrive while a commit
// is running, so that they share the next filesystem sync and transaction
// (group commit): concurrent SMTP deliveries and APPENDs cost one sync
// each group, not one each.
type appendGroup struct {
	mu      sync.Mutex
	queue   []*appendReq
	leading bool
}

type appendReq struct {
	b    *Batch
	res  Inserted
	err  error
	done chan struct{} // the result is in
	lead chan struct{} // this request's caller commits the next group
}

// groupCommit commits a one-message batch together with whatever else is
// queued. One caller at a time leads: it commits the queued group (its own
// request among them) in one sync and one transaction, then hands the lead
// to the first request that arrived meanwhile; the others wait for their
// result. A group is committed whole or not at all.
func (s *Store) groupCommit(ctx context.Context, b *Batch) (Inserted, error) {
	req := &appendReq{b: b, done: make(chan struct{}), lead: make(chan struct{})}
	g := &s.appends
	g.mu.Lock()
	g.queue = append(g.queue, req)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead {
		select {
		case <-req.done:
			return req.res, req.err
		case <-req.lead:
		}
	}
	g.mu.Lock()
	group := g.queue
	g.queue = nil
	g.mu.Unlock()
	// The group's commit must not fail because this caller gave up.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var items []NewMessage
	var bodies []body
	for _, r := range group {
		items = append(items, r.b.items...)
		bodies = append(bodies, r.b.bodies...)
	}
	committed := map[int64]bool{}
	out, err := s.commitItems(cctx, items, bodies, committed)
	for i, r := range group {
		r.b.done = true
		r.b.release(committed)
		if err != nil {
			r.err = err
		} else {
			r.res = out[i]
		}
		if r != req {
			close(r.done)
		}
	}
	g.mu.Lock()
	if len(g.queue) > 0 {
		close(g.queue[0].lead)
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	return req.res, req.err
}
