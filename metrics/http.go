package metrics

import (
	"context"
	_ "embed"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition (the store is writable, the legacy
// server answers).
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// statusPage is the status page: self-contained (no external assets), it
// reads /status.json every 5 seconds.
//
//go:embed status.html
var statusPage []byte

// Handler serves /metrics, /healthz (the process is up), /readyz (every
// check passes), /status (the status page; the report as JSON for clients
// that accept only that) and /status.json (the progress report).
func Handler(m *Metrics, report Reporter, checks []Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		failed := false
		var lines []string
		for _, c := range checks {
			if err := c.Run(ctx); err != nil {
				failed = true
				lines = append(lines, fmt.Sprintf("%s: %v", c.Name, err))
			} else {
				lines = append(lines, c.Name+": ok")
			}
		}
		if failed {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	})
	statusJSON := func(w http.ResponseWriter, r *http.Request) {
		rep, err := report(r.Context())
		if err != nil {
			http.Error(w, "cannot read the store", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		rep.WriteJSON(w)
	}
	mux.HandleFunc("GET /status.json", statusJSON)
	// The page for people; programs asking for JSON get the report.
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "application/json") {
			statusJSON(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		w.Write(statusPage)
	})
	return mux
}
