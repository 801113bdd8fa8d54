package capture

import (
	"log/slog"

	"mailcapture/addresses"
	"mailcapture/config"
	"mailcapture/legacyclient"
	"mailcapture/store"
)

// NewEngine builds an engine for the legacy server the configuration
// names.
func NewEngine(st *store.Store, cfg config.Config, log *slog.Logger) *Engine {
	return &Engine{
		Store:       st,
		IMAP:        legacyclient.Configured(cfg.Legacy.IMAP.Address, cfg.Legacy.IMAP.TLS, cfg.Legacy),
		POP3:        legacyclient.Configured(cfg.Legacy.POP3.Address, cfg.Legacy.POP3.TLS, cfg.Legacy),
		ManageSieve: legacyclient.Configured(cfg.Legacy.ManageSieve.Address, cfg.Legacy.ManageSieve.TLS, cfg.Legacy),
		Log:         log,
		Connections: cfg.Capture.ConnectionsPerAccount,
		NoCondStore: !cfg.Capture.TrustCondStore,
		Naming:      addresses.Configured(&cfg),
	}
}

// NewScheduler builds a scheduler over engine with the configured limits.
func NewScheduler(engine *Engine, cfg config.Config, log *slog.Logger) *Scheduler {
	return &Scheduler{Engine: engine, Workers: cfg.Capture.Workers, ConnectRate: cfg.Capture.ConnectRate,
		BackoffMin: cfg.Capture.RetryMin, BackoffMax: cfg.Capture.RetryMax, Log: log}
}
