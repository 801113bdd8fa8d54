package imapcheck

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// uidKey names a UID in one mailbox incarnation.
type uidKey struct {
	user, mailbox string
	uidvalidity   uint32
	uid           uint32
}

// registry is what all clients know together: the bytes of every
// appended message (by Message-ID), which message each UID names, which
// session saw a message as \Recent. Any disagreement is an error.
type registry struct {
	mu      sync.Mutex
	bodies  map[string][32]byte // Message-ID -> SHA-256 of the appended bytes
	uidMsg  map[uidKey]string   // UID -> Message-ID
	recent  map[uidKey]int      // UID -> session that had it \Recent
	errors  []string
	kinds   map[string]int
	latency map[string][]time.Duration
	count   map[string]int
}

func newRegistry() *registry {
	return &registry{bodies: map[string][32]byte{}, uidMsg: map[uidKey]string{}, recent: map[uidKey]int{},
		kinds: map[string]int{}, latency: map[string][]time.Duration{}, count: map[string]int{}}
}

// errorf records a consistency error of a kind.
func (g *registry) errorf(kind, format string, args ...any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.kinds[kind]++
	if len(g.errors) < 200 {
		g.errors = append(g.errors, kind+": "+fmt.Sprintf(format, args...))
	}
}

func (g *registry) appended(msgID string, body []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bodies[msgID] = sha256.Sum256(body)
}

// sawBody checks fetched bytes against what was appended.
func (g *registry) sawBody(k uidKey, body string, session int) {
	id := messageID(body)
	g.mu.Lock()
	want, known := g.bodies[id]
	g.mu.Unlock()
	if !known {
		g.errorf("unknown message", "session %d: UID %d of %s holds a message nobody appended (Message-ID %q, %d bytes: %q)", session, k.uid, k.mailbox, id, len(body), body[:min(len(body), 80)])
		return
	}
	if sha256.Sum256([]byte(body)) != want {
		g.errorf("body changed", "session %d: UID %d of %s: %d bytes differ from what was appended (%s)", session, k.uid, k.mailbox, len(body), id)
	}
	g.sawMessage(k, id, session)
}

// sawMessage checks that a UID always names the same message: a UID
// given to a different message is a reused UID.
func (g *registry) sawMessage(k uidKey, msgID string, session int) {
	if msgID == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	prev, ok := g.uidMsg[k]
	if !ok {
		g.uidMsg[k] = msgID
		return
	}
	if prev != msgID {
		g.mu.Unlock()
		g.errorf("UID reused", "session %d: UID %d of %s (UIDVALIDITY %d) names %s, earlier %s", session, k.uid, k.mailbox, k.uidvalidity, msgID, prev)
		g.mu.Lock()
	}
}

// sawRecent checks that only one session sees a message as \Recent.
func (g *registry) sawRecent(k uidKey, session int) {
	g.mu.Lock()
	prev, ok := g.recent[k]
	if !ok {
		g.recent[k] = session
	}
	g.mu.Unlock()
	if ok && prev != session {
		g.errorf("recent twice", "UID %d of %s is \\Recent in sessions %d and %d", k.uid, k.mailbox, prev, session)
	}
}

func (g *registry) timed(cmd string, d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.count[cmd]++
	if len(g.latency[cmd]) < 200000 {
		g.latency[cmd] = append(g.latency[cmd], d)
	}
}

// messageID reads the Message-ID header of a message.
func messageID(msg string) string {
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n") {
		if name, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "Message-ID") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Report is what a run found.
type Report struct {
	Duration time.Duration
	// Commands counts the commands sent, by name.
	Commands map[string]int
	// Median is each command's median latency.
	Median map[string]time.Duration
	// Errors counts consistency errors by kind; Samples describes some.
	Errors  map[string]int
	Samples []string
}

// Total is the number of commands sent.
func (r Report) Total() int {
	n := 0
	for _, c := range r.Commands {
		n += c
	}
	return n
}

// ErrorCount is the number of errors found.
func (r Report) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// PerSecond is the command rate.
func (r Report) PerSecond() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Total()) / r.Duration.Seconds()
}

func (g *registry) report(d time.Duration) Report {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := Report{Duration: d, Commands: map[string]int{}, Median: map[string]time.Duration{}, Errors: map[string]int{}}
	for k, v := range g.count {
		r.Commands[k] = v
	}
	for k, v := range g.kinds {
		r.Errors[k] = v
	}
	r.Samples = append(r.Samples, g.errors...)
	for cmd, ds := range g.latency {
		sorted := append([]time.Duration(nil), ds...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		r.Median[cmd] = sorted[len(sorted)/2]
	}
	return r
}
