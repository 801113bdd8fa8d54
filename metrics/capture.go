package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailcapture/labels"
)

// Capture counts what the capture engine does; it implements
// capture.Observer.
type Capture struct {
	messagesCopied prometheus.Counter
	bytesCopied    prometheus.Counter
	duration       prometheus.Histogram
	jobsActive     prometheus.Gauge
	// legacyErrors: label kind is a labels.LegacyKind.
	legacyErrors *prometheus.CounterVec
	mismatches   prometheus.Counter
	failures     prometheus.Counter
}

func newCapture(reg prometheus.Registerer) *Capture {
	c := &Capture{
		messagesCopied: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailcapture_capture_messages_copied_total",
			Help: "Messages copied from the legacy server into the local store."}),
		bytesCopied: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailcapture_capture_bytes_copied_total",
			Help: "Bytes of messages copied from the legacy server into the local store."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mailcapture_capture_duration_seconds",
			Help:    "Time from the start of an account's capture to its verified convergence.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		jobsActive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mailcapture_capture_jobs_active",
			Help: "Capture jobs running now."}),
		legacyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_legacy_errors_total",
			Help: "Failed exchanges with the legacy server (capture, logins, relay), by kind (auth, timeout, connect, tls, unavailable, protocol)."}, []string{"kind"}),
		mismatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailcapture_capture_verification_mismatches_total",
			Help: "Disagreements between the store and the legacy server found by verification passes."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailcapture_capture_failures_total",
			Help: "Capture passes that failed, whatever the cause (the legacy server, a full disk); each account's last error says why."}),
	}
	for _, kind := range labels.LegacyKinds {
		c.legacyErrors.WithLabelValues(string(kind)) // export every kind from the start
	}
	reg.MustRegister(c.messagesCopied, c.bytesCopied, c.duration, c.jobsActive, c.legacyErrors, c.mismatches, c.failures)
	return c
}

// Copied implements capture.Observer.
func (c *Capture) Copied(messages int, bytes int64) {
	c.messagesCopied.Add(float64(messages))
	c.bytesCopied.Add(float64(bytes))
}

// LegacyError implements capture.Observer.
func (c *Capture) LegacyError(kind labels.LegacyKind) {
	c.legacyErrors.WithLabelValues(string(kind)).Inc()
}

// VerificationMismatches implements capture.Observer.
func (c *Capture) VerificationMismatches(n int) { c.mismatches.Add(float64(n)) }

// PassFailed implements capture.Observer.
func (c *Capture) PassFailed() { c.failures.Inc() }

// JobStarted implements capture.Observer.
func (c *Capture) JobStarted() { c.jobsActive.Inc() }

// JobFinished implements capture.Observer.
func (c *Capture) JobFinished(ready bool, d time.Duration) {
	c.jobsActive.Dec()
	if ready {
		c.duration.Observe(d.Seconds())
	}
}
