// Package store is mailcapture's embedded mailbox store: SQLite (WAL, one
// writer) for metadata and one immutable file per message body.
//
// Durability: a body is written to its final path, named by a fresh id that
// no row references yet; all bodies of a batch are flushed to disk with one
// filesystem sync, then the metadata is committed (SQLite
// synchronous=FULL). Ids are handed out from ranges reserved in the
// database, which also records up to which id every file is settled
// (committed or removed). A crash leaves at most unreferenced files with
// ids above that mark; the next Open removes them. Deleted bodies are
// queued in the same transaction that deletes their rows and unlinked
// after it commits (again at Open, if a crash came in between).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Errors callers can test for with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrStateChanged = errors.New("account state changed concurrently")
	ErrReadOnly     = errors.New("store opened read-only")
	ErrLocked       = errors.New("store is in use by another mailcapture process")
)

// Options tunes a store.
type Options struct {
	// Hash holds the argon2id parameters for new password hashes.
	Hash HashParams
	// Logger receives recovery and background errors. Default: discard.
	Logger *slog.Logger
	// ReadOnly opens without taking the writer lock and without recovery,
	// for inspecting a store that a running server owns.
	ReadOnly bool
	// Control opens, like ReadOnly, beside a running server, but may ask
	// for spool actions (RequestRetry, RequestDrop) that the server's relay
	// queue carries out. No other write is allowed.
	Control bool
}

// Store is an open store. It is safe for concurrent use.
type Store struct {
	// appends groups concurrent single-message appends (group commit).
	appends appendGroup
	dir     string
	opts    Options
	log     *slog.Logger
	read    *sql.DB // readers (several connections)
	// packs remembers where packed bodies lie (OpenBody).
	packs   packIndex
	write   *sql.DB // the one writer connection
	lock    *os.File
	dataDir *os.File // kept open for syncfs
	// bodySyncs shares each syncfs among the writers waiting for one.
	bodySyncs groupSync
	// hashing holds a token per password hash being computed: a login
	// storm waits instead of costing memory without bound.
	hashing chan struct{}
	hashes  atomic.Int64 // computed or checked since Open

	// wmu serialises write transactions together with the unlinks and
	// the change notifications that follow them.
	wmu sync.Mutex
	ids idAllocator
	// pins keeps deleted bodies that sessions still show (PinBodies).
	pins bodyPins
	// restructured holds structures to store again (Structure).
	restructured restructured

	watchers watchers
}

const (
	dbName      = "store.db"
	blobsDir    = "blobs"
	inFlightDir = "inflight"
	lockName    = "lock"
)

// Open opens (creating if needed) the store in dir, migrates its schema and
// recovers from any crash.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Hash == (HashParams{}) {
		opts.Hash = DefaultHashParams()
	}
	hashing := opts.Hash.Concurrency
	if hashing <= 0 {
		hashing = runtime.GOMAXPROCS(0)
	}
	s := &Store{dir: dir, opts: opts, log: opts.Logger, hashing: make(chan struct{}, hashing)}
	s.pins = bodyPins{count: map[int64]int{}, gone: map[int64]bool{}, done: map[int64]bool{}}
	s.ids.store = s
	if opts.ReadOnly || opts.Control {
		if err := s.openDatabases(ctx); err != nil {
			s.Close()
			return nil, err
		}
		if err := checkVersion(ctx, s.read); err != nil {
			s.Close()
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
		return s, nil
	}
	if err := os.MkdirAll(filepath.Join(dir, blobsDir), 0o750); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, ErrLocked)
	}
	s.lock = lock
	if s.dataDir, err = os.Open(dir); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := s.openDatabases(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := migrate(ctx, s.write); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if err := s.recover(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: recovery: %w", dir, err)
	}
	return s, nil
}

func (s *Store) openDatabases(ctx context.Context) error {
	path := filepath.Join(s.dir, dbName)
	if s.opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("open store %s: %w", s.dir, err)
		}
	}
	pragmas := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "foreign_keys(1)", "journal_mode(WAL)", "synchronous(FULL)"} {
		pragmas.Add("_pragma", p)
	}
	dsn := "file:" + path + "?" + pragmas.Encode()
	var err error
	if !s.opts.ReadOnly {
		if s.write, err = sql.Open("sqlite", dsn+"&_txlock=immediate"); err != nil {
			return fmt.Errorf("open store database: %w", err)
		}
		s.write.SetMaxOpenConns(1)
		if err := s.write.PingContext(ctx); err != nil {
			return fmt.Errorf("open store database %s: %w", path, err)
		}
		// The writer's page cache holds the indexes a big mailbox's inserts
		// walk (32 MiB; SQLite's default is 2 MiB): the cost of a message
		// stays flat as a folder grows.
		if _, err := s.write.ExecContext(ctx, "PRAGMA cache_size = -32768"); err != nil {
			return fmt.Errorf("open store database %s: %w", path, err)
		}
	} else {
		dsn += "&mode=ro"
	}
	if s.read, err = sql.Open("sqlite", dsn); err != nil {
		return fmt.Errorf("open store database: %w", err)
	}
	s.read.SetMaxOpenConns(8)
	if err := s.read.PingContext(ctx); err != nil {
		return fmt.Errorf("open store database %s: %w", path, err)
	}
	return nil
}

// Close releases the store. Pending watchers are closed.
func (s *Store) Close() error {
	var errs []error
	s.watchers.closeAll()
	if s.read != nil {
		errs = append(errs, s.read.Close())
	}
	if s.write != nil {
		errs = append(errs, s.write.Close())
	}
	if s.dataDir != nil {
		errs = append(errs, s.dataDir.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}

// Ping checks that the store answers and, unless read-only, that a write
// transaction can be taken.
func (s *Store) Ping(ctx context.Context) error {
	if s.opts.ReadOnly {
		return s.read.PingContext(ctx)
	}
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE blob_ids SET reserved_up_to = reserved_up_to")
		return err
	})
}

// writeTx runs fn in a write transaction under the writer lock.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeTxLocked(ctx, fn)
}

// controlKey marks the context of a spool control write, the only write
// a store opened with Control may do.
type controlKey struct{}

func (s *Store) writeTxLocked(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.writeTxSync(ctx, true, fn)
}

// writeTxRelaxed runs fn in a write transaction whose commit is not
// flushed to disk by itself (synchronous=NORMAL in WAL mode): a crash of
// the process loses nothing of it, a power loss may lose it until the
// next durable commit or checkpoint flushes the log. For what may be
// lost that way, as Dovecot's index updates may: flags and recent marks,
// never a message.
func (s *Store) writeTxRelaxed(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeTxSync(ctx, false, fn)
}

// writeTxSync runs a write transaction, durable at commit when durable.
// It also drops the unlink queue's rows of bodies already unlinked, so
// that doing so costs no commit of its own.
func (s *Store) writeTxSync(ctx context.Context, durable bool, fn func(tx *sql.Tx) error) (err error) {
	if s.opts.ReadOnly || (s.opts.Control && ctx.Value(controlKey{}) == nil) {
		return ErrReadOnly
	}
	if !durable {
		if _, err := s.write.ExecContext(ctx, "PRAGMA synchronous = NORMAL"); err != nil {
			return err
		}
		defer func() {
			if _, rerr := s.write.ExecContext(context.WithoutCancel(ctx), "PRAGMA synchronous = FULL"); rerr != nil && err == nil {
				err = rerr
			}
		}()
	}
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	unlinked := s.takeUnlinked()
	packedGone := false
	for rest := unlinked; len(rest) > 0; {
		n := min(len(rest), 400)
		args := int64Args(rest[:n])
		// A packed body's row goes with its queued unlink; the last row
		// of a pack queues the pack itself (trigger packed_bodies_last).
		res, err := tx.ExecContext(ctx, "DELETE FROM packed_bodies WHERE id IN ("+placeholders(n)+")", args...)
		if err == nil {
			var gone int64
			if gone, err = res.RowsAffected(); gone > 0 {
				packedGone = true
			}
		}
		if err == nil {
			_, err = tx.ExecContext(ctx, "DELETE FROM unlink_queue WHERE blob_id IN ("+placeholders(n)+")", args...)
		}
		if err != nil {
			tx.Rollback()
			s.giveBackUnlinked(unlinked)
			return err
		}
		rest = rest[n:]
	}
	for id, js := range s.restructured.take() {
		// Derived data: a failure here only means it is parsed again.
		if _, err := tx.ExecContext(ctx, "UPDATE message_structures SET structure = ? WHERE id = ?", js, id); err != nil {
			break
		}
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		s.giveBackUnlinked(unlinked)
		return err
	}
	if err := tx.Commit(); err != nil {
		s.giveBackUnlinked(unlinked)
		return err
	}
	if packedGone {
		// A pack whose last body went is queued now: remove its file
		// (a failure leaves the queue row for the next try).
		if err := s.unlinkQueued(ctx); err != nil {
			s.log.Error("emptied packs could not be removed", "err", err)
		}
	}
	return nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func int64Args(ids []int64) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// blobPath is where a body lives: derived from its id only. Each aligned
// lease of ids (see idAllocator) maps to one of 256 directories, so
// concurrent writers, which hold different leases, create their files in
// different directories and do not contend for a directory's lock.
func (s *Store) blobPath(id int64) string {
	return filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", ((id-1)/leaseSize)&0xff), strconv.FormatInt(id, 10))
}

// createBlob creates the file for a new body, and its directory when the
// id is the first of its range.
func (s *Store) createBlob(id int64) (*os.File, error) {
	path := s.blobPath(id)
	f, err := openFile(path, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o640)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		f, err = openFile(path, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o640)
	}
	return f, err
}

// openBlob opens a body.
func (s *Store) openBlob(id int64) (*os.File, error) {
	return openFile(s.blobPath(id), syscall.O_RDONLY, 0)
}

// openFile opens a body file with open(2) and wraps it, instead of
// os.OpenFile: os.OpenFile tries to register every file with the network
// poller, which costs four more system calls per file on Linux and fails
// for regular files anyway.
func openFile(path string, flags int, perm uint32) (*os.File, error) {
	for {
		fd, err := syscall.Open(path, flags|syscall.O_CLOEXEC, perm)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}

// removeBlobs deletes the files of bodies that were never committed.
func (s *Store) removeBlobs(ids []int64) {
	for _, id := range ids {
		if err := os.Remove(s.blobPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Error("the body file of an uncommitted message could not be removed", "blob", id, "err", err)
		}
	}
}

// unlinkQueued removes the files of deleted rows and clears the queue.
// Called with wmu held.
func (s *Store) unlinkQueued(ctx context.Context) error {
	rows, err := s.write.QueryContext(ctx, "SELECT blob_id FROM unlink_queue")
	if err != nil {
		return err
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	for _, id := range ids {
		if s.pins.count[id] > 0 {
			// A session still shows the message: unlinked when released.
			s.pins.gone[id] = true
			continue
		}
		if s.pins.done[id] {
			continue
		}
		if err := os.Remove(s.blobPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unlink body %d: %w", id, err)
		}
		s.pins.done[id] = true
		s.pins.unlinked = append(s.pins.unlinked, id)
	}
	return nil
}

// bodyPins keeps the bodies of deleted messages that sessions still show
// (an IMAP session keeps an expunged message readable until it has told
// its client of the expunge); see PinBodies.
type bodyPins struct {
	mu    sync.Mutex
	count map[int64]int
	// gone: deleted, to be unlinked when the last pin goes.
	gone map[int64]bool
	// done: unlinked, its queue row not yet dropped (unlinked lists them
	// for the next write transaction, which drops the rows).
	done     map[int64]bool
	unlinked []int64
}

// PinBodies keeps the bodies of the given message ids on disk while they
// are pinned, even once their messages are deleted. Each pin needs an
// UnpinBodies.
func (s *Store) PinBodies(ids []int64) {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	for _, id := range ids {
		s.pins.count[id]++
	}
}

// UnpinBodies releases pins; a deleted message's body whose last pin goes
// is unlinked.
func (s *Store) UnpinBodies(ids []int64) {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	for _, id := range ids {
		if s.pins.count[id]--; s.pins.count[id] > 0 {
			continue
		}
		delete(s.pins.count, id)
		if s.pins.gone[id] {
			delete(s.pins.gone, id)
			if err := os.Remove(s.blobPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Error("the body file of a deleted message could not be removed", "id", id, "err", err)
				continue // the queue row stays: retried at the next Open
			}
			s.pins.done[id] = true
			s.pins.unlinked = append(s.pins.unlinked, id)
		}
	}
}

// takeUnlinked returns the ids whose bodies are unlinked but whose queue
// rows remain, for the caller's transaction to drop.
func (s *Store) takeUnlinked() []int64 {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	out := s.pins.unlinked
	s.pins.unlinked = nil
	for _, id := range out {
		delete(s.pins.done, id)
	}
	return out
}

// giveBackUnlinked puts ids taken by takeUnlinked back after a failed
// transaction.
func (s *Store) giveBackUnlinked(ids []int64) {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	for _, id := range ids {
		s.pins.done[id] = true
	}
	s.pins.unlinked = append(s.pins.unlinked, ids...)
}

// recover finishes what a crash interrupted: files of ids handed out but
// never committed are removed, queued unlinks are done, and every id up to
// the reserved mark is declared settled.
func (s *Store) recover(ctx context.Context) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var reserved, settled int64
	if err := s.write.QueryRowContext(ctx, "SELECT reserved_up_to, settled_up_to FROM blob_ids").Scan(&reserved, &settled); err != nil {
		return err
	}
	removed := 0
	for id := settled + 1; id <= reserved; id++ {
		path := s.blobPath(id)
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		known, err := s.blobReferenced(ctx, id)
		if err != nil {
			return err
		}
		if known {
			continue
		}
		if err := os.Remove(path); err != nil {
			return err
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("store: removed bodies of writes a stop interrupted", "bodies", removed)
		if err := s.syncBodies(); err != nil {
			return err
		}
	}
	if err := s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE blob_ids SET settled_up_to = reserved_up_to")
		return err
	}); err != nil {
		return err
	}
	return s.unlinkQueued(ctx)
}

func (s *Store) blobReferenced(ctx context.Context, id int64) (bool, error) {
	var n int
	err := s.write.QueryRowContext(ctx,
		`SELECT (SELECT count(*) FROM messages WHERE id = ?) + (SELECT count(*) FROM spool WHERE id = ?)
			+ EXISTS (SELECT 1 FROM packed_bodies WHERE pack = ?)`, id, id, id).Scan(&n)
	return n > 0, err
}

// syncBodies makes every body written so far durable, with their directory
// entries: one syncfs for a whole batch instead of one fsync per file.
func (s *Store) syncBodies() error {
	return s.bodySyncs.do(func() error { return unix.Syncfs(int(s.dataDir.Fd())) })
}

// idAllocator hands out blob ids from ranges reserved durably in the
// database, so an id is never reused, even after a crash. Writers take ids
// in leases: the lease "start" holds ids start+1 to start+leaseSize, start
// a multiple of leaseSize. The allocator tracks the leases in flight (not
// yet committed or removed) so that each new reservation can also record up
// to where every file is settled.
type idAllocator struct {
	store    *Store
	mu       sync.Mutex
	next     int64 // start of the next lease
	limit    int64 // end of the reserved range: leases start below it
	inFlight map[int64]struct{}
}

const (
	leaseSize      = 64
	idReserveChunk = 1024 * leaseSize
)

// lease hands out the first id of a fresh lease. Never called with wmu
// held.
func (a *idAllocator) lease(ctx context.Context) (int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next >= a.limit {
		settled := a.next
		for start := range a.inFlight {
			settled = min(settled, start)
		}
		var upTo int64
		err := a.store.writeTx(ctx, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, "SELECT reserved_up_to FROM blob_ids").Scan(&upTo); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "UPDATE blob_ids SET reserved_up_to = ?, settled_up_to = max(settled_up_to, ?)",
				upTo+idReserveChunk, settled)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("reserve body ids: %w", err)
		}
		// reserved_up_to only grows by whole chunks, so leases stay aligned.
		a.next, a.limit = upTo, upTo+idReserveChunk
	}
	start := a.next
	a.next += leaseSize
	if a.inFlight == nil {
		a.inFlight = map[int64]struct{}{}
	}
	a.inFlight[start] = struct{}{}
	return start, nil
}

// release settles leases: their files are committed or removed.
func (a *idAllocator) release(starts ...int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, start := range starts {
		delete(a.inFlight, start)
	}
}

// idSource gives one writer its ids, lease by lease. Release it once every
// file it named is committed or removed.
type idSource struct {
	alloc  *idAllocator
	leases []int64
	next   int64
	end    int64
}

func (src *idSource) take(ctx context.Context) (int64, error) {
	if src.next > src.end || src.end == 0 {
		start, err := src.alloc.lease(ctx)
		if err != nil {
			return 0, err
		}
		src.leases = append(src.leases, start)
		src.next, src.end = start+1, start+leaseSize
	}
	id := src.next
	src.next++
	return id, nil
}

func (src *idSource) release() {
	src.alloc.release(src.leases...)
	src.leases, src.next, src.end = nil, 0, 0
}

// packedAt is where a packed body lies.
type packedAt struct{ pack, offset, size int64 }

// packIndex remembers where the bodies of recently read packs lie, whole
// packs at a time, up to maxPackIndex bodies (the oldest packs go first).
// What it holds is never wrong while the pack exists: a body never moves,
// and ids are never reused.
type packIndex struct {
	mu    sync.Mutex
	at    map[int64]packedAt
	packs map[int64][]int64 // pack → its bodies in at
	order []int64           // packs, oldest first
}

const maxPackIndex = 65536

func (x *packIndex) find(id int64) (packedAt, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	at, ok := x.at[id]
	return at, ok
}

func (x *packIndex) add(pack int64, ids []int64, ats []packedAt) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.at == nil {
		x.at, x.packs = map[int64]packedAt{}, map[int64][]int64{}
	}
	if known, ok := x.packs[pack]; ok {
		// Loaded before a copy shared a stretch of it: add the newcomers.
		for i, id := range ids {
			if _, ok := x.at[id]; !ok {
				x.at[id] = ats[i]
				known = append(known, id)
			}
		}
		x.packs[pack] = known
		return
	}
	if len(ids) > maxPackIndex {
		return
	}
	for len(x.at)+len(ids) > maxPackIndex && len(x.order) > 0 {
		old := x.order[0]
		x.order = x.order[1:]
		for _, id := range x.packs[old] {
			delete(x.at, id)
		}
		delete(x.packs, old)
	}
	for i, id := range ids {
		x.at[id] = ats[i]
	}
	x.packs[pack] = ids
	x.order = append(x.order, pack)
}
