// Package metrics exposes mailcapture's Prometheus metrics and its HTTP
// endpoints (/metrics, /healthz, /readyz, /status).
//
// Every metric is defined in this file, on a private registry. Metric names
// are part of mailcapture's interface: dashboards and alerts use them. No
// metric carries a per-account label; per-account detail is on the status
// page and in `mailcapture status`.
package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"mailcapture/labels"
	"mailcapture/status"
	"mailcapture/store"
)

// Reporter produces the migration's progress report.
type Reporter func(ctx context.Context) (status.Report, error)

// Metrics holds the registry and the collectors.
type Metrics struct {
	// Registry is the private registry everything is registered on.
	Registry *prometheus.Registry
	// Capture counts the capture engine's work (a capture.Observer).
	Capture *Capture
	// Traffic counts logins, sessions, SMTP messages and limit refusals.
	Traffic *Traffic
}

// Descriptions of the metrics computed from the store at scrape time.
var (
	// accountsDesc: label state is capturing, cutover or captured.
	accountsDesc = prometheus.NewDesc("mailcapture_accounts",
		"Accounts known to mailcapture, by migration state.", []string{"state"}, nil)
	messagesRemainingDesc = prometheus.NewDesc("mailcapture_capture_messages_remaining",
		"Messages on the legacy server not yet in the local store (for accounts whose legacy size is known).", nil, nil)
	bytesRemainingDesc = prometheus.NewDesc("mailcapture_capture_bytes_remaining",
		"Bytes on the legacy server not yet in the local store (for accounts whose legacy size is known).", nil, nil)
	legacyMessagesDesc = prometheus.NewDesc("mailcapture_legacy_messages",
		"Messages in the legacy mailboxes of the known accounts, as last measured by their captures (the denominator of progress).", nil, nil)
	legacyBytesDesc = prometheus.NewDesc("mailcapture_legacy_bytes",
		"Bytes in the legacy mailboxes of the known accounts, as last measured by their captures.", nil, nil)
	storeMessagesDesc = prometheus.NewDesc("mailcapture_store_messages",
		"Messages in the local store.", nil, nil)
	storeBytesDesc = prometheus.NewDesc("mailcapture_store_bytes",
		"Bytes of message bodies in the local store.", nil, nil)
	queueMessagesDesc = prometheus.NewDesc("mailcapture_relay_queue_messages",
		"Messages in the relay spool (waiting for the legacy server or held during a cut-over).", nil, nil)
	queueOldestDesc = prometheus.NewDesc("mailcapture_relay_queue_oldest_age_seconds",
		"Age of the oldest message in the relay spool; 0 when it is empty.", nil, nil)
	scrapeErrorDesc = prometheus.NewDesc("mailcapture_status_scrape_error",
		"1 if reading the store for this scrape failed, else 0.", nil, nil)
	retirementDesc = prometheus.NewDesc("mailcapture_retirement_blockers",
		"What would break if the legacy server went away now, by kind (mailcapture retire-legacy --check lists them); all 0 once it is retired, or when nothing would.", []string{"kind"}, nil)
)

// New builds the registry: Go, process and build-info collectors plus the
// store-backed gauges computed by report at each scrape.
func New(report Reporter, log *slog.Logger) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		&storeCollector{report: report, log: log},
	)
	c := newCapture(reg)
	return &Metrics{Registry: reg, Capture: c, Traffic: newTraffic(reg, c.legacyErrors)}
}

// storeCollector reads the progress report once per scrape.
type storeCollector struct {
	report Reporter
	log    *slog.Logger
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{accountsDesc, messagesRemainingDesc, bytesRemainingDesc,
		legacyMessagesDesc, legacyBytesDesc, storeMessagesDesc, storeBytesDesc, queueMessagesDesc, queueOldestDesc, scrapeErrorDesc, retirementDesc} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.report(ctx)
	if err != nil {
		c.log.Error("the metrics could not read the store", "err", err)
		ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, 0)
	for _, st := range []store.State{store.StateCapturing, store.StateCutover, store.StateCaptured} {
		ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(r.Accounts[st]), string(st))
	}
	remaining := r.Remaining()
	ch <- prometheus.MustNewConstMetric(messagesRemainingDesc, prometheus.GaugeValue, float64(remaining.Messages))
	ch <- prometheus.MustNewConstMetric(bytesRemainingDesc, prometheus.GaugeValue, float64(remaining.Bytes))
	ch <- prometheus.MustNewConstMetric(legacyMessagesDesc, prometheus.GaugeValue, float64(r.Legacy.Messages))
	ch <- prometheus.MustNewConstMetric(legacyBytesDesc, prometheus.GaugeValue, float64(r.Legacy.Bytes))
	ch <- prometheus.MustNewConstMetric(storeMessagesDesc, prometheus.GaugeValue, float64(r.Stored.Messages))
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(r.Stored.Bytes))
	ch <- prometheus.MustNewConstMetric(queueMessagesDesc, prometheus.GaugeValue, float64(r.Spool.Messages))
	ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, r.Spool.OldestAgeSeconds)
	for _, kind := range labels.RetirementBlockers {
		var n int64
		if r.Retirement != nil {
			n = r.Retirement.Counts[kind]
		}
		ch <- prometheus.MustNewConstMetric(retirementDesc, prometheus.GaugeValue, float64(n), string(kind))
	}
}
