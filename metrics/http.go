package metrics

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition (the store is writable, the legacy
// server answers).
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Handler serves /metrics, /healthz (the process is up), /readyz (every
// check passes) and /status (the progress report as JSON).
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
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		rep, err := report(r.Context())
		if err != nil {
			http.Error(w, "cannot read the store", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		rep.WriteJSON(w)
	})
	return mux
}
