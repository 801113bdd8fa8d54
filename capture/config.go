package capture

import (
	"crypto/tls"
	"log/slog"
	"net"

	"mailcapture/config"
	"mailcapture/store"
)

// NewEngine builds an engine for the legacy server the configuration
// names.
func NewEngine(st *store.Store, cfg config.Config, log *slog.Logger) *Engine {
	return &Engine{
		Store:       st,
		IMAP:        endpoint(cfg.Legacy.IMAP.Address, cfg.Legacy.IMAP.TLS, cfg.Legacy),
		POP3:        endpoint(cfg.Legacy.POP3.Address, cfg.Legacy.POP3.TLS, cfg.Legacy),
		Log:         log,
		Connections: cfg.Capture.ConnectionsPerAccount,
		NoCondStore: !cfg.Capture.TrustCondStore,
	}
}

// NewScheduler builds a scheduler over engine with the configured limits.
func NewScheduler(engine *Engine, cfg config.Config, log *slog.Logger) *Scheduler {
	return &Scheduler{Engine: engine, Workers: cfg.Capture.Workers, ConnectRate: cfg.Capture.ConnectRate,
		BackoffMin: cfg.Capture.RetryMin, BackoffMax: cfg.Capture.RetryMax, Log: log}
}

func endpoint(addr, mode string, legacy config.Legacy) Endpoint {
	host, _, _ := net.SplitHostPort(addr)
	return Endpoint{
		Address: addr,
		TLS:     mode,
		// Verification is on unless legacy.tls_verify says otherwise.
		TLSConfig: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: !legacy.TLSVerify},
		Timeout:   legacy.Timeout,
	}
}
