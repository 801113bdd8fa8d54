package legacytest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy stands between mailcapture and the legacy server so tests can
// take the legacy server away and bring it back.
type Proxy struct {
	Addr   string
	target string
	ln     net.Listener
	down   atomic.Bool
	// accepted counts connections forwarded to the target.
	accepted atomic.Int64
	// cutAfter, when positive, cuts each new connection once the target
	// has sent that many bytes.
	cutAfter atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
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
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

// SetDown makes new connections close at once (true) or be forwarded
// (false). Going down also cuts the connections in progress.
func (p *Proxy) SetDown(down bool) {
	p.down.Store(down)
	if down {
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	}
}

// CutAfter makes connections opened from now on break once the target has
// sent n bytes to the client (in the middle of a literal, a line, a
// FETCH); 0 stops that.
func (p *Proxy) CutAfter(n int64) { p.cutAfter.Store(n) }

// Accepted returns how many connections reached the target.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Close stops the proxy and every connection through it.
func (p *Proxy) Close() {
	p.ln.Close()
	p.SetDown(true)
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.accepted.Add(1)
		p.track(c, up)
		p.wg.Add(2)
		go p.pipe(c, up, p.cutAfter.Load())
		go p.pipe(up, c, 0)
	}
}

func (p *Proxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = true
	}
}

func (p *Proxy) pipe(dst, src net.Conn, limit int64) {
	defer p.wg.Done()
	if limit > 0 {
		io.CopyN(dst, src, limit)
	} else {
		io.Copy(dst, src)
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
