package status

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestProblemsKeepsLatestWarnings(t *testing.T) {
	var out bytes.Buffer
	p := NewProblems(2)
	log := slog.New(p.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelError})))
	log.Info("fine")
	log.With("account", "a@example.org").Warn("capture failed", "err", errors.New("connection refused"))
	log.Error("relay: deferred", "err", "EOF")
	log.Warn("third")
	got := p.Recent()
	if len(got) != 2 || got[0].Message != "third" || got[1].Message != "relay: deferred" || got[1].Error != "EOF" || got[1].Level != "error" {
		t.Fatalf("recent problems: %+v", got)
	}
	// The wrapped handler still applies its own level.
	if strings.Contains(out.String(), "capture failed") || !strings.Contains(out.String(), "relay: deferred") {
		t.Fatalf("log:\n%s", out.String())
	}
	p = NewProblems(5)
	slog.New(p.Handler(slog.DiscardHandler)).With("account", "a@example.org").Warn("capture failed", "err", errors.New("connection refused"))
	if got := p.Recent(); len(got) != 1 || got[0].Account != "a@example.org" || got[0].Error != "connection refused" {
		t.Fatalf("recent problems: %+v", got)
	}
}
