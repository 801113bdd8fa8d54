package imapstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"mailcapture/imapwire"
	"mailcapture/store"
	"mailcapture/watchdog"
)

// session is one authenticated client connection.
type session struct {
	srv  *Server
	conn net.Conn
	r    *imapwire.Reader
	w    *bufio.Writer
	acct store.Account
	log  *slog.Logger
	ctx  context.Context
	sel  *view
	// out is scratch space for building responses.
	out []byte
	// tag is the tag of the command being run.
	tag string
	// okCode and okText, if set by a command, are its tagged OK's.
	okCode, okText string
	logout         bool

	mu       sync.Mutex
	waiting  bool   // blocked between two commands
	stopping string // the BYE's text, once asked to stop
	stopped  chan struct{}
}

func newSession(srv *Server, conn net.Conn, r *bufio.Reader, acct store.Account, log *slog.Logger) *session {
	if r == nil {
		r = bufio.NewReaderSize(conn, 16<<10)
	}
	s := &session{srv: srv, conn: conn, acct: acct, log: log, stopped: make(chan struct{})}
	s.r = imapwire.NewReader(r)
	s.w = bufio.NewWriterSize(watchdog.Writer{Conn: conn, Timeout: srv.opts.WriteTimeout}, 32<<10)
	s.r.Continue = func() error {
		s.w.WriteString("+ OK\r\n")
		return s.w.Flush()
	}
	return s
}

// statusError is a command's tagged NO or BAD.
type statusError struct {
	kind, code, text string
}

func (e *statusError) Error() string { return e.kind + " " + e.text }

func no(code, format string, args ...any) error {
	return &statusError{kind: "NO", code: code, text: fmt.Sprintf(format, args...)}
}

func bad(format string, args ...any) error {
	return &statusError{kind: "BAD", text: fmt.Sprintf(format, args...)}
}

// errBye ends the session after the command (the client was told why).
var errBye = errors.New("session ended")

// stop asks the session to end with BYE between two commands; one that
// waits for the next command or idles ends at once.
func (s *session) stop(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping != "" {
		return
	}
	s.stopping = text
	close(s.stopped)
	if s.waiting {
		s.conn.SetReadDeadline(time.Now())
	}
}

func (s *session) stopText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

func (s *session) bye(text string) {
	s.w.WriteString("* BYE " + text + "\r\n")
	s.w.Flush()
}

// run reads and answers commands until the session ends.
func (s *session) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ctx = ctx
	stopOnCancel := context.AfterFunc(ctx, func() { s.stop("server shutting down, please reconnect") })
	defer stopOnCancel()
	defer func() {
		s.releaseView()
		s.w.Flush()
		s.conn.Close()
	}()
	for !s.logout {
		if !s.commandBuffered() {
			if err := s.w.Flush(); err != nil {
				return
			}
		}
		s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.IdleTimeout))
		s.mu.Lock()
		if s.stopping != "" {
			s.mu.Unlock()
			s.bye(s.stopping)
			return
		}
		s.waiting = true
		s.mu.Unlock()
		err := s.r.Begin()
		s.mu.Lock()
		s.waiting = false
		stopping := s.stopping
		s.mu.Unlock()
		if stopping != "" {
			s.bye(stopping)
			return
		}
		var long *imapwire.ErrLineTooLong
		var limit *imapwire.LimitError
		switch {
		case errors.As(err, &long):
			tag := long.Tag
			if tag == "" {
				tag = "*"
			}
			s.w.WriteString(tag + " BAD line too long\r\n")
			continue
		case errors.As(err, &limit):
			s.w.WriteString("* BAD " + limit.Msg + "\r\n")
			continue
		case isTimeout(err):
			s.bye("autologout: idle for too long")
			return
		case err != nil:
			return
		}
		s.conn.SetReadDeadline(time.Time{})
		if err := s.command(); err != nil {
			return
		}
	}
}

// commandBuffered tells whether a whole command line is read ahead: its
// answer can wait to be written with the next one (pipelining).
func (s *session) commandBuffered() bool {
	n := s.r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := s.r.Buf().Peek(n)
	for _, c := range b {
		if c == '\n' {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// command runs one command; a non-nil error ends the session.
func (s *session) command() (err error) {
	s.okCode, s.okText = "", ""
	tag, terr := s.r.Tag()
	if terr != nil {
		s.r.Discard()
		s.w.WriteString("* BAD invalid tag\r\n")
		return nil
	}
	s.tag = tag
	name, cmd, perr := s.commandName()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("an IMAP command panicked (a bug); the session was ended", "command", name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			if s.srv.opts.Panicked != nil {
				s.srv.opts.Panicked()
			}
			s.bye("[SERVERBUG] internal error, please reconnect")
			err = errBye
		}
	}()
	if perr == nil {
		switch {
		case cmd.selected && s.sel == nil:
			perr = bad("no mailbox selected")
		case s.srv.panicOn != "" && name == s.srv.panicOn:
			panic("panic asked for by a test")
		default:
			perr = cmd.run(s)
		}
	}
	if errors.Is(perr, errBye) {
		return perr
	}
	var se *statusError
	var syn *imapwire.SyntaxError
	var lim *imapwire.LimitError
	switch {
	case perr == nil:
		if s.sel != nil && cmd.run != nil {
			s.sync(cmd.expunges)
		}
		text := s.okText
		if text == "" {
			text = name + " completed"
		}
		s.tagged("OK", s.okCode, text)
	case errors.As(perr, &se):
		s.r.Discard()
		if se.kind == "NO" && s.sel != nil {
			s.sync(cmd.expunges)
		}
		s.tagged(se.kind, se.code, se.text)
	case errors.As(perr, &syn):
		s.r.Discard()
		s.tagged("BAD", "", syn.Msg)
	case errors.As(perr, &lim):
		s.r.Discard()
		s.tagged("BAD", "", lim.Msg)
	case isNetError(perr):
		return perr
	default:
		s.r.Discard()
		s.log.Error("an IMAP command failed: "+name, "err", perr)
		s.tagged("NO", "SERVERBUG", "internal error, try again later")
	}
	return nil
}

// isNetError tells a broken connection from a command's failure.
func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, os.ErrDeadlineExceeded)
}

// commandName reads the command's name (UID and its subcommand as one).
func (s *session) commandName() (string, command, error) {
	if err := s.r.SP(); err != nil {
		return "", command{}, bad("missing command")
	}
	name, err := s.r.AtomUpper()
	if err != nil {
		return "", command{}, bad("missing command")
	}
	if name == "UID" {
		if s.r.SP() != nil {
			return name, command{}, bad("missing UID command")
		}
		sub, err := s.r.AtomUpper()
		if err != nil {
			return name, command{}, bad("missing UID command")
		}
		name += " " + sub
	}
	cmd, ok := commands[name]
	if !ok {
		if _, preauth := preauthOnly[name]; preauth {
			return name, command{}, bad("%s: already authenticated", name)
		}
		return name, command{}, bad("unknown command %s", name)
	}
	return name, cmd, nil
}

// command describes what a command needs and allows.
type command struct {
	run func(*session) error
	// selected: only in the selected state.
	selected bool
	// expunges: EXPUNGE responses may follow it (not after FETCH, STORE
	// and SEARCH, RFC 3501 7.4.1; the UID forms allow them).
	expunges bool
}

var preauthOnly = map[string]struct{}{"LOGIN": {}, "AUTHENTICATE": {}, "STARTTLS": {}}

var commands map[string]command

func init() {
	commands = map[string]command{
		"CAPABILITY":  {run: (*session).cmdCapability, expunges: true},
		"NOOP":        {run: (*session).cmdNoop, expunges: true},
		"CHECK":       {run: (*session).cmdNoop, selected: true, expunges: true},
		"LOGOUT":      {run: (*session).cmdLogout},
		"ID":          {run: (*session).cmdID, expunges: true},
		"ENABLE":      {run: (*session).cmdEnable, expunges: true},
		"NAMESPACE":   {run: (*session).cmdNamespace, expunges: true},
		"IDLE":        {run: (*session).cmdIdle, expunges: true},
		"SELECT":      {run: (*session).cmdSelect},
		"EXAMINE":     {run: (*session).cmdExamine},
		"CLOSE":       {run: (*session).cmdClose, selected: true},
		"UNSELECT":    {run: (*session).cmdUnselect, selected: true},
		"CREATE":      {run: (*session).cmdCreate, expunges: true},
		"DELETE":      {run: (*session).cmdDelete, expunges: true},
		"RENAME":      {run: (*session).cmdRename, expunges: true},
		"SUBSCRIBE":   {run: (*session).cmdSubscribe, expunges: true},
		"UNSUBSCRIBE": {run: (*session).cmdUnsubscribe, expunges: true},
		"LIST":        {run: (*session).cmdList, expunges: true},
		"LSUB":        {run: (*session).cmdLsub, expunges: true},
		"STATUS":      {run: (*session).cmdStatus, expunges: true},
		"APPEND":      {run: (*session).cmdAppend, expunges: true},
		"EXPUNGE":     {run: (*session).cmdExpunge, selected: true, expunges: true},
		"UID EXPUNGE": {run: (*session).cmdUIDExpunge, selected: true, expunges: true},
		"FETCH":       {run: (*session).cmdFetch, selected: true},
		"UID FETCH":   {run: (*session).cmdUIDFetch, selected: true, expunges: true},
		"STORE":       {run: (*session).cmdStore, selected: true},
		"UID STORE":   {run: (*session).cmdUIDStore, selected: true, expunges: true},
		"SEARCH":      {run: (*session).cmdSearch, selected: true},
		"UID SEARCH":  {run: (*session).cmdUIDSearch, selected: true, expunges: true},
		"COPY":        {run: (*session).cmdCopy, selected: true, expunges: true},
		"UID COPY":    {run: (*session).cmdUIDCopy, selected: true, expunges: true},
		"MOVE":        {run: (*session).cmdMove, selected: true, expunges: true},
		"UID MOVE":    {run: (*session).cmdUIDMove, selected: true, expunges: true},
	}
}

// tagged writes the command's completion.
func (s *session) tagged(kind, code, text string) {
	s.out = append(s.out[:0], s.tag...)
	s.out = append(s.out, ' ')
	s.out = append(s.out, kind...)
	s.out = append(s.out, ' ')
	if code != "" {
		s.out = append(s.out, '[')
		s.out = append(s.out, code...)
		s.out = append(s.out, "] "...)
	}
	s.out = append(s.out, text...)
	s.out = append(s.out, "\r\n"...)
	s.w.Write(s.out)
}

// untagged writes "* " line.
func (s *session) untagged(line string) {
	s.w.WriteString("* ")
	s.w.WriteString(line)
	s.w.WriteString("\r\n")
}

// opCtx is the context of one store operation: it carries the view as
// the origin of its changes (so the view's own updates are told apart).
func (s *session) opCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Minute)
	if s.sel != nil {
		ctx = store.WithOrigin(ctx, s.sel)
	}
	return ctx, cancel
}

func (s *session) end() error { return s.r.End() }

func (s *session) cmdCapability() error {
	if err := s.end(); err != nil {
		return err
	}
	s.untagged("CAPABILITY " + Capabilities())
	return nil
}

func (s *session) cmdNoop() error { return s.end() }

func (s *session) cmdLogout() error {
	if err := s.end(); err != nil {
		return err
	}
	s.untagged("BYE logging out")
	s.logout = true
	return nil
}

// cmdID answers RFC 2971 ID; what the client says is only logged.
func (s *session) cmdID() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	var fields []string
	if !s.r.MaybeWord("NIL") {
		err := s.r.List(func() error {
			f, _, err := s.r.NString()
			if len(fields) < 60 {
				fields = append(fields, f)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	if err := s.end(); err != nil {
		return err
	}
	if len(fields) > 0 {
		s.log.Debug("imap client id", "id", strings.Join(fields, " "))
	}
	s.untagged(`ID ("name" "mailcapture")`)
	return nil
}

// cmdEnable answers RFC 5161 ENABLE: none of the extensions it enables is
// offered, so nothing is enabled.
func (s *session) cmdEnable() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	for {
		if _, err := s.r.Atom(); err != nil {
			return err
		}
		if s.r.AtEnd() {
			break
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	s.untagged("ENABLED")
	return nil
}

func (s *session) separator() string {
	if s.acct.LegacySeparator == "" {
		return "/"
	}
	return s.acct.LegacySeparator[:1]
}

func (s *session) cmdNamespace() error {
	if err := s.end(); err != nil {
		return err
	}
	s.out = append(s.out[:0], "* NAMESPACE (("...)
	s.out = imapwire.AppendMailbox(s.out, s.acct.LegacyPrefix)
	s.out = append(s.out, ' ')
	s.out = imapwire.AppendQuotedOrLiteral(s.out, s.separator())
	s.out = append(s.out, ")) NIL NIL\r\n"...)
	s.w.Write(s.out)
	return nil
}

// cmdIdle runs RFC 2177 IDLE: updates are sent as they come until the
// client's DONE.
func (s *session) cmdIdle() error {
	if err := s.end(); err != nil {
		return err
	}
	s.w.WriteString("+ idling\r\n")
	if s.sel != nil {
		s.sync(true)
	}
	if err := s.w.Flush(); err != nil {
		return errBye
	}
	done := make(chan error, 1)
	go func() {
		s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.IdleTimeout))
		line, err := s.r.ReadLine()
		if err == nil && !strings.EqualFold(strings.TrimSpace(line), "DONE") {
			err = bad("expected DONE")
		}
		done <- err
	}()
	var notify chan struct{}
	if s.sel != nil {
		notify = s.sel.notify
	}
	for {
		select {
		case err := <-done:
			s.conn.SetReadDeadline(time.Time{})
			if isTimeout(err) {
				s.bye("autologout: idle for too long")
				return errBye
			}
			if err != nil {
				var se *statusError
				if errors.As(err, &se) {
					return err
				}
				return errBye
			}
			return nil
		case <-notify:
			s.sync(true)
			if err := s.w.Flush(); err != nil {
				return errBye
			}
		case <-s.stopped:
			s.bye(s.stopText())
			s.conn.Close()
			<-done
			return errBye
		}
	}
}
