package legacytest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy stands between mailcapture and the legacy server so tests can
// inject faults: take the legacy server away and bring it back, refuse
// connections, cut connections in the middle of a reply or of a command,
// lose a reply, hang, or answer slowly.
type Proxy struct {
	Addr   string
	target string
	lnMu   sync.Mutex
	ln     net.Listener
	down   atomic.Bool
	hang   atomic.Bool
	// accepted counts connections forwarded to the target.
	accepted atomic.Int64
	// cutAfter, when positive, cuts each new connection once the target
	// has sent that many bytes.
	cutAfter atomic.Int64
	// loseReplyAfter, when set, cuts each new connection once the client
	// has sent these bytes: they reach the target, its answer never
	// reaches the client.
	loseReplyAfter atomic.Pointer[[]byte]
	// delay holds back every chunk the target sends.
	delay atomic.Int64
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// StartProxy forwards a loopback port to target until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve(ln)
	t.Cleanup(p.Close)
	return p
}

// SetDown makes new connections close at once (true) or be forwarded
// (false). Going down also cuts the connections in progress.
func (p *Proxy) SetDown(down bool) {
	p.down.Store(down)
	if down {
		p.cutAll()
	}
}

// SetRefusing closes the proxy's port (true: connections are refused, as
// by a host with nothing listening) or opens it again on the same address
// (false).
func (p *Proxy) SetRefusing(t testing.TB, refusing bool) {
	t.Helper()
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if refusing {
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		return
	}
	if p.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		t.Fatalf("proxy: listen again on %s: %v", p.Addr, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.serve(ln)
}

// SetHanging makes new connections be accepted and then never answered
// (true), like a legacy server that hangs; false forwards them again and
// cuts the hanging ones.
func (p *Proxy) SetHanging(hang bool) {
	p.hang.Store(hang)
	if !hang {
		p.cutAll()
	}
}

// SetDelay holds back every chunk the target sends by d (a legacy server
// that answers slowly); 0 stops that.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// CutAfter makes connections opened from now on break once the target has
// sent n bytes to the client (in the middle of a literal, a line, a
// FETCH); 0 stops that.
func (p *Proxy) CutAfter(n int64) { p.cutAfter.Store(n) }

// LoseReplyAfter makes connections opened from now on break once the
// client has sent marker: everything up to and including it reaches the
// target, which carries the command out, but its answer never reaches the
// client (a connection dropped after the end of an SMTP DATA, after a
// LOGIN). A marker cut short (" LOGIN ") drops the client in the middle of
// its command instead. nil stops that.
func (p *Proxy) LoseReplyAfter(marker []byte) {
	if marker == nil {
		p.loseReplyAfter.Store(nil)
		return
	}
	m := bytes.Clone(marker)
	p.loseReplyAfter.Store(&m)
}

// Accepted returns how many connections reached the target.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Close stops the proxy and every connection through it.
func (p *Proxy) Close() {
	p.lnMu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	p.lnMu.Unlock()
	p.SetDown(true)
	p.wg.Wait()
}

func (p *Proxy) cutAll() {
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *Proxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		if p.hang.Load() {
			p.track(c)
			continue // closed by SetHanging(false) or Close
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.accepted.Add(1)
		p.track(c, up)
		var marker []byte
		if m := p.loseReplyAfter.Load(); m != nil {
			marker = *m
		}
		lost := make(chan struct{})
		p.wg.Add(2)
		go p.pipeReplies(c, up, p.cutAfter.Load(), lost)
		go p.pipeCommands(up, c, marker, lost)
	}
}

func (p *Proxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = true
	}
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// pipeReplies copies the target's bytes to the client: at most limit
// bytes (0: no limit), each chunk held back by the configured delay, none
// once lost is closed (the target still gets to answer: the connection to
// it closes after its next chunk).
func (p *Proxy) pipeReplies(client, up net.Conn, limit int64, lost chan struct{}) {
	defer p.wg.Done()
	defer func() {
		client.Close()
		up.Close()
		p.untrack(client, up)
	}()
	buf := make([]byte, 32<<10)
	var sent int64
	for {
		n, err := up.Read(buf)
		if n > 0 {
			select {
			case <-lost:
				return
			default:
			}
			if d := time.Duration(p.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			chunk := buf[:n]
			if limit > 0 && sent+int64(n) > limit {
				chunk = chunk[:limit-sent]
			}
			if _, werr := client.Write(chunk); werr != nil {
				return
			}
			sent += int64(len(chunk))
			if limit > 0 && sent >= limit {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pipeCommands copies the client's bytes to the target until marker has
// gone through; then it drops the client and tells pipeReplies the
// answers are lost. The connection to the target stays open until the
// target answers, so it finishes what it was sent.
func (p *Proxy) pipeCommands(up, client net.Conn, marker []byte, lost chan struct{}) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	var tail []byte // the last len(marker)-1 bytes sent, to find a marker split across reads
	for {
		n, err := client.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if len(marker) > 0 {
				seen := append(tail, chunk...)
				if i := bytes.Index(seen, marker); i >= 0 {
					end := i + len(marker) - len(tail) // marker's end within chunk
					up.Write(chunk[:end])
					close(lost)
					client.Close()
					return
				}
				if keep := len(marker) - 1; len(seen) > keep {
					tail = append([]byte(nil), seen[len(seen)-keep:]...)
				} else {
					tail = seen
				}
			}
			if _, werr := up.Write(chunk); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	client.Close()
	up.Close()
}
