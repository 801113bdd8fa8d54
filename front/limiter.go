package front

import (
	"net"
	"strings"
	"sync"
	"time"
)

// LoginLimiter bounds failed logins per client address and per account
// over a sliding window, so that the proxy cannot be used to guess
// passwords against the legacy server (docs/CONTRACT.md, invariant 7). A refused
// attempt never reaches the legacy server nor the password hash.
type LoginLimiter struct {
	// PerAddress is the most failures from one address in Window.
	// Default 20.
	PerAddress int
	// PerAccount is the most failures for one account in Window. Default 5.
	PerAccount int
	// Window is the sliding window. Default 10 minutes.
	Window time.Duration

	mu       sync.Mutex
	failures map[string][]time.Time
	now      func() time.Time
}

func (l *LoginLimiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

func (l *LoginLimiter) window() time.Duration { return orDuration(l.Window, 10*time.Minute) }

func keys(addr net.Addr, account string) (addrKey, accountKey string) {
	host := addr.String()
	if tcp, ok := addr.(*net.TCPAddr); ok {
		host = tcp.IP.String()
	}
	return "addr:" + host, "account:" + strings.ToLower(account)
}

// recent returns the failures of key still in the window (pruning the
// rest). Called with mu held.
func (l *LoginLimiter) recent(key string, now time.Time) int {
	list := l.failures[key]
	cut := now.Add(-l.window())
	i := 0
	for i < len(list) && list[i].Before(cut) {
		i++
	}
	if i == len(list) {
		delete(l.failures, key)
		return 0
	}
	l.failures[key] = list[i:]
	return len(list) - i
}

// Allow tells whether a login for account from addr may be tried.
func (l *LoginLimiter) Allow(addr net.Addr, account string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	a, acct := keys(addr, account)
	return l.recent(a, now) < orInt(l.PerAddress, 20) && l.recent(acct, now) < orInt(l.PerAccount, 5)
}

// SetLimits changes the allowances and window (a configuration reload);
// failures counted so far are kept.
func (l *LoginLimiter) SetLimits(perAddress, perAccount int, window time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.PerAddress, l.PerAccount, l.Window = perAddress, perAccount, window
}

// Failed records a failed login. If this failure is the one that reaches
// a limit, reached says which (for example "from 192.0.2.7" or "for
// ann@example.org"); otherwise it is empty.
func (l *LoginLimiter) Failed(addr net.Addr, account string) (reached string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failures == nil {
		l.failures = map[string][]time.Time{}
	}
	now := l.clock()
	a, acct := keys(addr, account)
	l.failures[a] = append(l.failures[a], now)
	l.failures[acct] = append(l.failures[acct], now)
	switch {
	case l.recent(a, now) == orInt(l.PerAddress, 20):
		return "from " + strings.TrimPrefix(a, "addr:")
	case l.recent(acct, now) == orInt(l.PerAccount, 5):
		return "for " + strings.TrimPrefix(acct, "account:")
	}
	return ""
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}
