package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailcapture/labels"
	"mailcapture/status"
	"mailcapture/store"
)

func fixedReport(ctx context.Context) (status.Report, error) {
	return status.Report{
		Accounts:   map[store.State]int64{store.StateCapturing: 2, store.StateCaptured: 5},
		Stored:     status.Progress{Messages: 70, Bytes: 7000},
		Legacy:     status.Progress{Messages: 100, Bytes: 9000},
		Spool:      status.Spool{Messages: 3, OldestAgeSeconds: 42},
		Retirement: &status.Retirement{Counts: map[labels.RetirementBlocker]int64{labels.BlockerUnresolved: 2}},
	}, nil
}

// TestEveryDeclaredMetricIsExported scrapes the registry and checks that
// each metric this package declares appears, with the store's figures.
func TestEveryDeclaredMetricIsExported(t *testing.T) {
	m := New(fixedReport, slog.New(slog.DiscardHandler))
	m.Capture.Copied(12, 3400)
	m.Capture.LegacyError(labels.LegacyTimeout)
	m.Capture.VerificationMismatches(2)
	m.Capture.JobStarted()
	m.Capture.JobFinished(true, 90*time.Second)
	rec := httptest.NewRecorder()
	Handler(m, fixedReport, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	descs := make(chan *prometheus.Desc, 32)
	(&storeCollector{}).Describe(descs)
	close(descs)
	for d := range descs {
		name := d.String()
		name = name[strings.Index(name, `fqName: "`)+9:]
		name = name[:strings.Index(name, `"`)]
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("declared metric %s is not exported", name)
		}
	}
	for _, want := range []string{
		`mailcapture_accounts{state="capturing"} 2`,
		`mailcapture_accounts{state="cutover"} 0`,
		`mailcapture_accounts{state="captured"} 5`,
		"mailcapture_capture_messages_remaining 30",
		"mailcapture_capture_bytes_remaining 2000",
		"mailcapture_relay_queue_messages 3",
		"mailcapture_relay_queue_oldest_age_seconds 42",
		"mailcapture_status_scrape_error 0",
		`mailcapture_retirement_blockers{kind="unresolved_addresses"} 2`,
		`mailcapture_retirement_blockers{kind="spooled"} 0`,
		"go_goroutines", "process_cpu_seconds_total", "go_build_info",
		"mailcapture_capture_messages_copied_total 12",
		"mailcapture_capture_bytes_copied_total 3400",
		`mailcapture_legacy_errors_total{kind="timeout"} 1`,
		`mailcapture_legacy_errors_total{kind="auth"} 0`,
		"mailcapture_capture_verification_mismatches_total 2",
		"mailcapture_capture_jobs_active 0",
		"mailcapture_capture_duration_seconds_count 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestScrapeErrorIsReported(t *testing.T) {
	failing := func(ctx context.Context) (status.Report, error) { return status.Report{}, errors.New("disk on fire") }
	m := New(failing, slog.New(slog.DiscardHandler))
	rec := httptest.NewRecorder()
	Handler(m, failing, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "mailcapture_status_scrape_error 1") {
		t.Fatal("a failed store read is not visible in the scrape")
	}
	rec = httptest.NewRecorder()
	Handler(m, failing, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/status.json", nil))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "disk on fire") {
		t.Fatalf("/status on failure: %d %q", rec.Code, rec.Body.String())
	}
}

func TestReadiness(t *testing.T) {
	m := New(fixedReport, slog.New(slog.DiscardHandler))
	checks := []Check{
		{Name: "store", Run: func(context.Context) error { return nil }},
		{Name: "legacy imap", Run: func(context.Context) error { return errors.New("connection refused") }},
	}
	rec := httptest.NewRecorder()
	Handler(m, fixedReport, checks).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 503 || string(body) != "store: ok\nlegacy imap: connection refused\n" {
		t.Fatalf("/readyz: %d %q", rec.Code, body)
	}
	rec = httptest.NewRecorder()
	Handler(m, fixedReport, checks[:1]).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 {
		t.Fatalf("/readyz with passing checks: %d", rec.Code)
	}
}
