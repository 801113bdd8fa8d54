// Package connlimit bounds open connections per client address and in
// total, for every listener of mailcapture: a client that opens thousands
// of connections gets a refusal in its protocol's words, not a share of
// the server.
package connlimit

import (
	"errors"
	"net"
	"sync"
	"time"

	"mailcapture/labels"
)

// Limiter counts open connections. The zero value limits nothing; one
// Limiter is shared by all listeners so the limits hold across protocols.
type Limiter struct {
	// PerAddress is the most open connections from one client IP address;
	// 0 means no limit.
	PerAddress int
	// Total is the most open connections in all; 0 means no limit.
	Total int
	// Refused, if set, is called for each refused connection with the limit
	// that refused it: "connections_per_address" or "connections".
	Refused func(limit labels.Limit)

	mu    sync.Mutex
	open  map[string]int
	total int
}

// Acquire reserves a connection slot for addr. It returns a release func
// (safe to call more than once) and true, or nil and false when a limit is
// reached.
func (l *Limiter) Acquire(addr net.Addr) (release func(), ok bool) {
	host := hostOf(addr)
	l.mu.Lock()
	var limit labels.Limit
	switch {
	case l.Total > 0 && l.total >= l.Total:
		limit = labels.Connections
	case l.PerAddress > 0 && l.open[host] >= l.PerAddress:
		limit = labels.ConnectionsPerAddress
	}
	if limit != "" {
		l.mu.Unlock()
		if l.Refused != nil {
			l.Refused(limit)
		}
		return nil, false
	}
	if l.open == nil {
		l.open = map[string]int{}
	}
	l.open[host]++
	l.total++
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.open[host]--; l.open[host] <= 0 {
				delete(l.open, host)
			}
		})
	}, true
}

// Open returns the number of open connections.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func hostOf(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}

// Listen wraps ln: Accept returns only connections within the limits (each
// releases its slot when closed). A connection over a limit is sent
// refusal (the protocol's "go away", e.g. "* BYE ..." with CRLF; empty for
// implicit-TLS listeners, where no plaintext may be written) and closed,
// without holding up Accept.
func Listen(ln net.Listener, l *Limiter, refusal string) net.Listener {
	return &listener{Listener: ln, limiter: l, refusal: refusal}
}

type listener struct {
	net.Listener
	limiter *Limiter
	refusal string
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, ok := ln.limiter.Acquire(c.RemoteAddr())
		if ok {
			return &conn{Conn: c, release: release}, nil
		}
		go func() {
			if ln.refusal != "" {
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.Write([]byte(ln.refusal))
			}
			c.Close()
		}()
	}
}

// conn releases its slot when closed.
type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// CloseWrite shuts the writing side of the connection underneath, where
// it can be (a lingering close needs it).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
