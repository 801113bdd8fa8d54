// Package watchdog bounds how long a connection may make no progress.
package watchdog

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Conn fails any read or write that makes no progress for Timeout: the
// deadline is pushed forward before each call, so a long transfer that
// keeps flowing is never cut, but a silent peer is. Deadlines set by the
// code using the connection are ignored (libraries that set minutes-long
// deadlines of their own cannot lengthen the watch).
type Conn struct {
	net.Conn
	Timeout time.Duration
	expired atomic.Bool
}

// New watches c with timeout.
func New(c net.Conn, timeout time.Duration) *Conn {
	return &Conn{Conn: c, Timeout: timeout}
}

func (c *Conn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
	n, err := c.Conn.Read(p)
	c.note(err)
	return n, err
}

func (c *Conn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.Timeout))
	n, err := c.Conn.Write(p)
	c.note(err)
	return n, err
}

// SetDeadline is ignored: the watch sets the deadlines.
func (c *Conn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline is ignored: the watch sets the deadlines.
func (c *Conn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline is ignored: the watch sets the deadlines.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

func (c *Conn) note(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.expired.Store(true)
	}
}

// TimedOut reports whether a read or write failed for lack of progress.
func (c *Conn) TimedOut() bool { return c.expired.Load() }

// Writer writes to a connection with a fresh write deadline of Timeout
// before each write: a peer that stops reading fails the write, one that
// reads slowly does not. Reads, and their deadlines, are left to the
// connection's owner.
type Writer struct {
	Conn    net.Conn
	Timeout time.Duration
}

func (w Writer) Write(p []byte) (int, error) {
	w.Conn.SetWriteDeadline(time.Now().Add(w.Timeout))
	return w.Conn.Write(p)
}
