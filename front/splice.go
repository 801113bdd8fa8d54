package front

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/watchdog"
)

// proxiedIMAP is a client session spliced to the legacy server. It follows
// the client's commands and the server's tagged completions, so that a
// cut-over can end it between commands.
type proxiedIMAP struct {
	account string
	client  net.Conn
	clientR *bufio.Reader
	legacy  *legacyclient.IMAPSession
	// idle closes the session when the client sends nothing for this
	// long; 0 never.
	idle time.Duration
	// writeTimeout bounds each write to the client.
	writeTimeout time.Duration

	mu        sync.Mutex
	byeText   string            // the BYE's text, set by end
	inflight  map[string]string // tag -> command name
	midCmd    bool              // the client is sending a command's lines
	stopping  bool
	boundary  chan struct{} // signalled when nothing is in flight
	ended     chan struct{}
	endedOnce sync.Once

	// deadlineMu orders the idle clock's read deadlines before the
	// closing one: once closing is set, nothing moves the deadline
	// again, so the lingering close ends within lingerTime.
	deadlineMu sync.Mutex
	closing    bool
}

func newProxiedIMAP(account string, client net.Conn, r *bufio.Reader, legacy *legacyclient.IMAPSession, idle, writeTimeout time.Duration) *proxiedIMAP {
	return &proxiedIMAP{account: account, client: client, clientR: r, legacy: legacy, idle: idle, writeTimeout: writeTimeout,
		inflight: map[string]string{}, boundary: make(chan struct{}, 1), ended: make(chan struct{})}
}

// sessionEnd says which side ended a proxied session, and why.
type sessionEnd struct {
	by  string // "client", "legacy" or "server" (a cut-over or shutdown)
	err error  // the read or write error that ended it; nil for a clean end
}

// run splices until either side closes or the session is ended, and
// returns what ended it.
func (p *proxiedIMAP) run() sessionEnd {
	done := make(chan sessionEnd, 2)
	go func() {
		done <- p.clientToLegacy()
	}()
	go func() {
		done <- p.legacyToClient()
	}()
	first := <-done
	p.mu.Lock()
	if p.stopping {
		first = sessionEnd{by: "server"}
	}
	p.mu.Unlock()
	p.close()
	<-done
	return first
}

func (p *proxiedIMAP) close() {
	p.endedOnce.Do(func() {
		p.legacy.Close()
		p.deadlineMu.Lock()
		p.closing = true
		p.deadlineMu.Unlock()
		lingerClose(p.client)
		close(p.ended)
	})
}

// lingerTime bounds how long a closing connection's last input is read
// and dropped.
const lingerTime = 500 * time.Millisecond

// lingerClose closes a client connection without losing what was last
// written to it: closing a socket with unread input makes the kernel
// reset the connection, and a client that had just sent its next command
// would read the reset instead of the BYE before it. The writing side is
// shut first, then what the client still sends is read and dropped until
// it closes its side (at most lingerTime).
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(lingerTime))
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	}
	c.Close()
}

// clientToLegacy forwards the client's commands line by line (literals
// raw), noting each command's tag.
func (p *proxiedIMAP) clientToLegacy() sessionEnd {
	for {
		p.armIdle()
		line, err := p.clientR.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// Overlong line: forward as is, it ends later.
			if _, err := p.legacy.Write(line); err != nil {
				return sessionEnd{"legacy", err}
			}
			continue
		}
		if err != nil {
			return clientEnd(err)
		}
		p.mu.Lock()
		startsCommand := !p.midCmd
		if startsCommand {
			if p.stopping {
				p.mu.Unlock()
				p.bye()
				return sessionEnd{by: "server"}
			}
			tag, rest, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
			name, _, _ := strings.Cut(rest, " ")
			if idleDone(p.inflight, tag) {
				// DONE ends an IDLE: part of that command, not a new one.
			} else if tag != "" {
				p.inflight[tag] = strings.ToUpper(name)
			}
		}
		n, isLiteral := trailingLiteral(line)
		p.midCmd = isLiteral
		p.mu.Unlock()
		if _, err := p.legacy.Write(line); err != nil {
			return sessionEnd{"legacy", err}
		}
		if isLiteral {
			p.armIdle()
			if _, err := io.CopyN(p.legacy, p.clientR, n); err != nil {
				return sessionEnd{"client", err}
			}
		}
	}
}

// clientEnd is the end of a session whose client stopped sending: a
// clean close is not an error.
func clientEnd(err error) sessionEnd {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return sessionEnd{"client", err}
}

// armIdle restarts the client's idle clock, unless the session is
// closing: the lingering close's deadline then stands, and the reader
// that races it ends with it.
func (p *proxiedIMAP) armIdle() {
	if p.idle <= 0 {
		return
	}
	p.deadlineMu.Lock()
	defer p.deadlineMu.Unlock()
	if !p.closing {
		p.client.SetReadDeadline(time.Now().Add(p.idle))
	}
}

// idleDone tells whether line is the DONE that ends an IDLE in flight.
func idleDone(inflight map[string]string, word string) bool {
	if !strings.EqualFold(word, "DONE") {
		return false
	}
	for _, name := range inflight {
		if name == "IDLE" {
			return true
		}
	}
	return false
}

// legacyToClient forwards the server's answers, skipping literals, and
// notes tagged completions.
func (p *proxiedIMAP) legacyToClient() (end sessionEnd) {
	r := p.legacy.R
	w := &batchWriter{w: watchdog.Writer{Conn: p.client, Timeout: p.writeTimeout}}
	defer func() {
		if err := w.Flush(); err != nil && end.by == "legacy" {
			end = sessionEnd{"client", err}
		}
	}()
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			if _, err := w.Write(line); err != nil {
				return sessionEnd{"client", err}
			}
			continue
		}
		if err != nil {
			return sessionEnd{"legacy", err}
		}
		tag, rest, _ := strings.Cut(string(line), " ")
		status, _, _ := strings.Cut(rest, " ")
		n, isLiteral := trailingLiteral(line)
		if _, err := w.Write(line); err != nil {
			return sessionEnd{"client", err}
		}
		if isLiteral {
			if end := copyLiteral(w, r, n); end != nil {
				return *end
			}
			continue
		}
		completion := false
		if s := strings.ToUpper(status); tag != "*" && tag != "+" && (s == "OK" || s == "NO" || s == "BAD") {
			completion = true
		}
		// Write out whenever nothing more is at hand, and always at a
		// command's completion (a cut-over may follow it with * BYE).
		if r.Buffered() == 0 || completion || tag == "+" {
			if err := w.Flush(); err != nil {
				return sessionEnd{"client", err}
			}
		}
		if completion {
			p.mu.Lock()
			delete(p.inflight, tag)
			// Only an end waiting for it is told: a signal left from an
			// earlier boundary would let a later end cut a command's
			// answer short.
			if p.stopping && p.atBoundaryLocked() {
				select {
				case p.boundary <- struct{}{}:
				default:
				}
			}
			p.mu.Unlock()
		}
	}
}

// copyLiteral forwards n bytes of a literal from r, writing out whenever r
// has nothing more at hand. A failure says which side it came from.
func copyLiteral(w *batchWriter, r *bufio.Reader, n int64) *sessionEnd {
	for n > 0 {
		k := min(n, int64(r.Buffered()))
		if k == 0 {
			if err := w.Flush(); err != nil {
				return &sessionEnd{"client", err}
			}
			k = min(n, int64(r.Size()))
		}
		b, err := r.Peek(int(k))
		if len(b) == 0 {
			return &sessionEnd{"legacy", err}
		}
		if _, err := w.Write(b); err != nil {
			return &sessionEnd{"client", err}
		}
		r.Discard(len(b))
		n -= int64(len(b))
	}
	return nil
}

func (p *proxiedIMAP) atBoundaryLocked() bool {
	if p.midCmd {
		return false
	}
	for _, name := range p.inflight {
		if name != "IDLE" { // an IDLE may be ended at any time
			return false
		}
	}
	return true
}

// end ends the session at the next command boundary with * BYE, waiting
// at most until ctx ends.
func (p *proxiedIMAP) end(ctx context.Context, reason string) {
	p.mu.Lock()
	p.byeText = reason
	p.stopping = true
	now := p.atBoundaryLocked()
	p.mu.Unlock()
	if !now {
		select {
		case <-p.boundary:
		case <-p.ended:
			return
		case <-ctx.Done():
		}
	}
	p.bye()
}

func (p *proxiedIMAP) bye() {
	p.mu.Lock()
	text := p.byeText
	p.mu.Unlock()
	p.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(p.client, "* BYE [UNAVAILABLE] "+text+"\r\n")
	p.close()
}

// trailingLiteral reads "{n}" or "{n+}" at the end of a line.
func trailingLiteral(line []byte) (int64, bool) {
	l := bytes.TrimRight(line, "\r\n")
	if !bytes.HasSuffix(l, []byte("}")) {
		return 0, false
	}
	open := bytes.LastIndexByte(l, '{')
	if open < 0 {
		return 0, false
	}
	num := strings.TrimSuffix(string(l[open+1:len(l)-1]), "+")
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// sessions tracks the proxied sessions of each account.
type sessions[T comparable] struct {
	mu   sync.Mutex
	byID map[string]map[T]struct{}
}

func (s *sessions[T]) add(account string, p T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID == nil {
		s.byID = map[string]map[T]struct{}{}
	}
	key := strings.ToLower(account)
	if s.byID[key] == nil {
		s.byID[key] = map[T]struct{}{}
	}
	s.byID[key][p] = struct{}{}
}

func (s *sessions[T]) remove(account string, p T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID[strings.ToLower(account)], p)
}

// all returns every proxied session.
func (s *sessions[T]) all() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []T
	for _, set := range s.byID {
		for p := range set {
			out = append(out, p)
		}
	}
	return out
}

// of returns the account's proxied sessions.
func (s *sessions[T]) of(account string) []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []T
	for p := range s.byID[strings.ToLower(account)] {
		out = append(out, p)
	}
	return out
}
