// Package imapstore is the local IMAP server: it serves the store's
// mailboxes to the sessions of captured accounts, after the front end has
// authenticated them (IMAP4rev1, RFC 3501, with IDLE, NAMESPACE, UIDPLUS,
// UNSELECT, CHILDREN, LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, MOVE,
// ESEARCH, STATUS=SIZE, LITERAL+, APPENDLIMIT and ENABLE), with the folder
// names, hierarchy separator and namespace of the legacy server the
// account came from.
//
// Where it answers differently from Dovecot, the code cites the RFC that
// allows it.
package imapstore

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"mailcapture/store"
)

// AppendLimit is the largest message APPEND takes (RFC 7889).
const AppendLimit = 64 << 20

// capabilities is what the server announces once a client is logged in.
var capabilities = []string{
	"IMAP4rev1", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "UNSELECT", "CHILDREN",
	"LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE", "MOVE", "ESEARCH", "STATUS=SIZE", "APPENDLIMIT=67108864",
}

// Capabilities is what CAPABILITY lists in an authenticated session; the
// front end sends the same list in the OK of a login it hands over.
func Capabilities() string { return strings.Join(capabilities, " ") }

// Options tunes a Server.
type Options struct {
	// Log receives the server's own messages; sessions log through the
	// logger given to Serve. Default: discard.
	Log *slog.Logger
	// WriteTimeout bounds each write to a client: one that stops reading
	// is dropped. Default 1 minute.
	WriteTimeout time.Duration
	// IdleTimeout ends a session silent this long (RFC 3501 5.4: at least
	// 30 minutes). Default 30 minutes.
	IdleTimeout time.Duration
	// Panicked, if set, is called when a command panicked (the session
	// is ended, the stack logged): for a metric.
	Panicked func()
}

// Server serves authenticated sessions over the store. Its methods are
// safe for concurrent use.
type Server struct {
	store *store.Store
	opts  Options

	mu        sync.Mutex
	mailboxes map[int64]*mailbox
	idle      int // states in mailboxes that nobody has selected
	sessions  map[*session]struct{}
	closing   bool
	// recentUIDs are \Recent boundaries not yet written to the store
	// (mailbox id -> first UID not given); flushed in the background.
	recentUIDs map[int64]uint32
	flushing   bool
	// panicOn, set by tests only, makes the named command panic.
	panicOn string
}

// NewServer returns a server over st and hooks it to the store's changes.
func NewServer(st *store.Store, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = time.Minute
	}
	if opts.IdleTimeout < 30*time.Minute {
		opts.IdleTimeout = 30 * time.Minute
	}
	srv := &Server{store: st, opts: opts, mailboxes: map[int64]*mailbox{}, sessions: map[*session]struct{}{},
		recentUIDs: map[int64]uint32{}}
	st.OnChange(srv.apply)
	return srv
}

// Serve runs one session of an authenticated account on conn until the
// client logs out, the connection ends, ctx ends or Shutdown. r holds what
// was read ahead of conn (the front end's buffer); nothing is written
// before the first command's answer: the client has had the OK of its
// login. log is the connection's logger.
func (srv *Server) Serve(ctx context.Context, conn net.Conn, r *bufio.Reader, acct store.Account, log *slog.Logger) {
	if log == nil {
		log = srv.opts.Log
	}
	s := newSession(srv, conn, r, acct, log)
	srv.mu.Lock()
	if srv.closing {
		srv.mu.Unlock()
		s.bye("server shutting down, please reconnect")
		return
	}
	srv.sessions[s] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.sessions, s)
		srv.mu.Unlock()
	}()
	s.run(ctx)
}

// Shutdown ends every session with * BYE between two commands (one in
// IDLE at once) and returns once they have ended, or when ctx ends; then
// it writes the \Recent boundaries still in memory.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.mu.Lock()
	srv.closing = true
	sessions := make([]*session, 0, len(srv.sessions))
	for s := range srv.sessions {
		sessions = append(sessions, s)
	}
	srv.mu.Unlock()
	for _, s := range sessions {
		s.stop("server shutting down, please reconnect")
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		srv.mu.Lock()
		n := len(srv.sessions)
		srv.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			for _, s := range sessions {
				s.conn.Close()
			}
			srv.flushRecent(context.WithoutCancel(ctx))
			return ctx.Err()
		case <-tick.C:
		}
	}
	srv.flushRecent(ctx)
	return nil
}

// noteRecent records a mailbox's new \Recent boundary, to be written to
// the store in the background (a crash may give some messages \Recent
// again, never to two live sessions).
func (srv *Server) noteRecent(mailboxID int64, uid uint32) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if uid <= srv.recentUIDs[mailboxID] {
		return
	}
	srv.recentUIDs[mailboxID] = uid
	if !srv.flushing {
		srv.flushing = true
		go func() {
			time.Sleep(time.Second)
			srv.flushRecent(context.Background())
		}()
	}
}

// flushRecent writes the \Recent boundaries in memory.
func (srv *Server) flushRecent(ctx context.Context) {
	srv.mu.Lock()
	dirty := srv.recentUIDs
	srv.recentUIDs = map[int64]uint32{}
	srv.flushing = false
	srv.mu.Unlock()
	if len(dirty) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := srv.store.SetRecentUIDs(ctx, dirty); err != nil {
		srv.opts.Log.Warn("the \\Recent marks could not be saved; a restart may show some messages as recent again", "err", err)
		srv.mu.Lock()
		for id, uid := range dirty {
			srv.recentUIDs[id] = max(srv.recentUIDs[id], uid)
		}
		srv.mu.Unlock()
	}
}

// recentBoundary is a mailbox's \Recent boundary, including what is not
// written yet.
func (srv *Server) recentBoundary(mb store.Mailbox) uint32 {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return max(mb.RecentUID, srv.recentUIDs[mb.ID])
}
