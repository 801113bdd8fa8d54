package front

import (
	"net"
	"strings"
	"sync"
	"time"

	"mailcapture/slidingwindow"
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

	mu       sync.Mutex // the limits
	failures slidingwindow.Counter
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

// Allow tells whether a login for account from addr may be tried.
func (l *LoginLimiter) Allow(addr net.Addr, account string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now, w := l.clock(), l.window()
	a, acct := keys(addr, account)
	return l.failures.Count(a, now, w) < orInt(l.PerAddress, 20) && l.failures.Count(acct, now, w) < orInt(l.PerAccount, 5)
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
	now, w := l.clock(), l.window()
	a, acct := keys(addr, account)
	fromAddr, forAccount := l.failures.Add(a, now, w), l.failures.Add(acct, now, w)
	switch {
	case fromAddr == orInt(l.PerAddress, 20):
		return "from " + strings.TrimPrefix(a, "addr:")
	case forAccount == orInt(l.PerAccount, 5):
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
