package status

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Problem is one warning or error mailcapture logged.
type Problem struct {
	At      time.Time `json:"at"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	// Account, when the problem concerns one.
	Account string `json:"account,omitempty"`
	// Error is the err attribute of the log line.
	Error string `json:"error,omitempty"`
}

// Problems keeps the latest warnings and errors logged, for the status
// page: the admin sees a legacy server that refuses, hangs or drops
// connections, or a full disk, without reading the log.
type Problems struct {
	mu     sync.Mutex
	keep   int
	recent []Problem // oldest first
}

// NewProblems keeps the latest keep problems.
func NewProblems(keep int) *Problems { return &Problems{keep: keep} }

// Recent returns the problems kept, newest first.
func (p *Problems) Recent() []Problem {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Problem, len(p.recent))
	for i, pr := range p.recent {
		out[len(out)-1-i] = pr
	}
	return out
}

func (p *Problems) add(pr Problem) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.recent) == p.keep {
		copy(p.recent, p.recent[1:])
		p.recent = p.recent[:len(p.recent)-1]
	}
	p.recent = append(p.recent, pr)
}

// Handler wraps h: every record at warning level or above is also kept.
func (p *Problems) Handler(h slog.Handler) slog.Handler {
	return &problemHandler{next: h, p: p}
}

type problemHandler struct {
	next  slog.Handler
	p     *Problems
	attrs []slog.Attr // from WithAttrs, outside any group
}

func (h *problemHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *problemHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		pr := Problem{At: r.Time.UTC(), Level: strings.ToLower(r.Level.String()), Message: r.Message}
		note := func(a slog.Attr) bool {
			switch a.Key {
			case "account":
				pr.Account = a.Value.String()
			case "err":
				pr.Error = fmt.Sprint(a.Value.Any())
			}
			return true
		}
		for _, a := range h.attrs {
			note(a)
		}
		r.Attrs(note)
		h.p.add(pr)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *problemHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &problemHandler{next: h.next.WithAttrs(attrs), p: h.p, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *problemHandler) WithGroup(name string) slog.Handler {
	return &problemHandler{next: h.next.WithGroup(name), p: h.p}
}
