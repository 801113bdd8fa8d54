// Package store is mailcapture's embedded mailbox store: SQLite (WAL, one
// writer) for metadata and one immutable file per message body.
//
// Durability: a body is written to tmp/, all bodies of a batch are flushed
// to disk with one filesystem sync, then the metadata is committed (SQLite
// synchronous=FULL), and only then are the files renamed into blobs/. A
// crash at any point leaves either a committed message whose file is still
// in tmp/ (moved into place at the next Open) or an uncommitted file in
// tmp/ (removed at the next Open). Deleted bodies are queued in the same
// transaction that deletes their rows and unlinked after it commits.
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
	"strconv"
	"sync"

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
}

// Store is an open store. It is safe for concurrent use.
type Store struct {
	dir    string
	opts   Options
	log    *slog.Logger
	read   *sql.DB // readers (several connections)
	write  *sql.DB // the one writer connection
	lock   *os.File
	tmpDir *os.File // kept open for syncfs

	// wmu serialises write transactions together with the file renames
	// and unlinks that follow them, and the change notifications.
	wmu sync.Mutex
	ids idAllocator

	watchers watchers
}

const (
	dbName   = "store.db"
	blobsDir = "blobs"
	tmpName  = "tmp"
	lockName = "lock"
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
	s := &Store{dir: dir, opts: opts, log: opts.Logger}
	s.ids.store = s
	if opts.ReadOnly {
		return s, s.openDatabases(ctx)
	}
	for _, d := range []string{dir, filepath.Join(dir, blobsDir), filepath.Join(dir, tmpName)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
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
	if s.tmpDir, err = os.Open(filepath.Join(dir, tmpName)); err != nil {
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
	if s.tmpDir != nil {
		errs = append(errs, s.tmpDir.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

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

func (s *Store) writeTxLocked(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// blobPath is where a committed body lives: derived from its id only.
func (s *Store) blobPath(id int64) string {
	return filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", id&0xff), strconv.FormatInt(id, 10))
}

func (s *Store) tmpPath(id int64) string {
	return filepath.Join(s.dir, tmpName, strconv.FormatInt(id, 10))
}

// openBlob opens a committed body; between commit and rename it is still
// in tmp/.
func (s *Store) openBlob(id int64) (*os.File, error) {
	f, err := os.Open(s.blobPath(id))
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.Open(s.tmpPath(id))
	}
	return f, err
}

// placeBlobs moves committed bodies from tmp/ into blobs/. Called with wmu
// held, right after the commit.
func (s *Store) placeBlobs(ids []int64) {
	made := map[string]bool{}
	for _, id := range ids {
		dst := s.blobPath(id)
		dir := filepath.Dir(dst)
		if !made[dir] {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				s.log.Error("store: create blob directory", "dir", dir, "err", err)
			}
			made[dir] = true
		}
		if err := os.Rename(s.tmpPath(id), dst); err != nil {
			// The body stays readable in tmp/; the next Open moves it.
			s.log.Error("store: move body into place", "blob", id, "err", err)
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
	if len(ids) == 0 {
		return nil
	}
	for _, id := range ids {
		for _, p := range []string{s.blobPath(id), s.tmpPath(id)} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("unlink body %d: %w", id, err)
			}
		}
	}
	return s.writeTxLocked(ctx, func(tx *sql.Tx) error {
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, "DELETE FROM unlink_queue WHERE blob_id = ?", id); err != nil {
				return err
			}
		}
		return nil
	})
}

// recover finishes what a crash interrupted: bodies of committed rows still
// in tmp/ are moved into place, bodies of uncommitted ones are removed,
// queued unlinks are done.
func (s *Store) recover(ctx context.Context) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	entries, err := os.ReadDir(filepath.Join(s.dir, tmpName))
	if err != nil {
		return err
	}
	var committed []int64
	removed := 0
	for _, e := range entries {
		id, err := strconv.ParseInt(e.Name(), 10, 64)
		path := filepath.Join(s.dir, tmpName, e.Name())
		if err != nil {
			if err := os.Remove(path); err != nil {
				return err
			}
			removed++
			continue
		}
		known, err := s.blobReferenced(ctx, id)
		if err != nil {
			return err
		}
		if known {
			committed = append(committed, id)
			continue
		}
		if err := os.Remove(path); err != nil {
			return err
		}
		removed++
	}
	s.placeBlobs(committed)
	if len(committed)+removed > 0 {
		s.log.Info("store: recovered after an unclean stop", "bodies_placed", len(committed), "partial_bodies_removed", removed)
		if err := syncDir(filepath.Join(s.dir, tmpName)); err != nil {
			return err
		}
	}
	return s.unlinkQueued(ctx)
}

func (s *Store) blobReferenced(ctx context.Context, id int64) (bool, error) {
	var n int
	err := s.write.QueryRowContext(ctx,
		"SELECT (SELECT count(*) FROM messages WHERE id = ?) + (SELECT count(*) FROM spool WHERE id = ?)", id, id).Scan(&n)
	return n > 0, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// syncBodies makes every body written to tmp/ durable: one syncfs for the
// whole batch instead of one fsync per file.
func (s *Store) syncBodies() error {
	return unix.Syncfs(int(s.tmpDir.Fd()))
}

// idAllocator hands out blob ids from ranges reserved durably in the
// database, so an id is never reused, even after a crash.
type idAllocator struct {
	store *Store
	mu    sync.Mutex
	next  int64
	limit int64 // exclusive
}

const idReserveChunk = 100000

func (a *idAllocator) allocate(ctx context.Context) (int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next >= a.limit {
		var upTo int64
		err := a.store.writeTx(ctx, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, "SELECT reserved_up_to FROM blob_ids").Scan(&upTo); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "UPDATE blob_ids SET reserved_up_to = ?", upTo+idReserveChunk)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("reserve body ids: %w", err)
		}
		a.next, a.limit = upTo+1, upTo+idReserveChunk+1
	}
	id := a.next
	a.next++
	return id, nil
}
