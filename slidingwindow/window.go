// Package slidingwindow counts events per key over a sliding window: the
// failed logins of the login limits, the messages of the submission
// allowance.
package slidingwindow

import (
	"sync"
	"time"
)

// Counter counts events per key over the last Window. The zero value is
// ready; it is safe for concurrent use.
type Counter struct {
	mu     sync.Mutex
	events map[string][]time.Time
}

// recent prunes key's events older than window and returns how many
// remain. Called with mu held.
func (c *Counter) recent(key string, now time.Time, window time.Duration) int {
	list := c.events[key]
	cut := now.Add(-window)
	i := 0
	for i < len(list) && list[i].Before(cut) {
		i++
	}
	if i == len(list) {
		delete(c.events, key)
		return 0
	}
	c.events[key] = list[i:]
	return len(list) - i
}

// Count returns how many events of key fall in the window ending at now.
func (c *Counter) Count(key string, now time.Time, window time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recent(key, now, window)
}

// Add records an event of key at now and returns how many fall in the
// window with it.
func (c *Counter) Add(key string, now time.Time, window time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.events == nil {
		c.events = map[string][]time.Time{}
	}
	c.events[key] = append(c.events[key], now)
	return c.recent(key, now, window)
}
