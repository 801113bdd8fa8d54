package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/metrics"
	"mailcapture/status"
)

const (
	dashboardPath = "../../monitoring/grafana/mailcapture-dashboard.json"
	alertsPath    = "../../monitoring/prometheus/alerts.yml"
)

// dashboardQueries returns every query of the shipped dashboard.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var out []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

var metricName = regexp.MustCompile(`\bmailcapture_[a-z0-9_]+`)

// TestDashboardNamesOnlyExportedMetrics: every metric a dashboard query or
// an alert rule names is one the binary exports.
func TestDashboardNamesOnlyExportedMetrics(t *testing.T) {
	m := metrics.New(func(context.Context) (status.Report, error) { return status.Report{}, nil }, nil)
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		exported[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[name+suffix] = true
			}
		}
	}
	alerts, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	sources := append(dashboardQueries(t), string(alerts))
	for _, src := range sources {
		names := metricName.FindAllString(src, -1)
		if len(names) == 0 && !strings.Contains(src, "groups:") {
			t.Errorf("query names no mailcapture metric: %s", src)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s is not exported by mailcapture (in %.60s)", n, src)
			}
		}
	}
}

// TestPrometheusEvaluatesDashboard scrapes a running mailcapture (after a
// capture, a cut-over and SMTP traffic) with a real Prometheus, evaluates
// every dashboard query (each must return data) and loads the alert rules
// (each evaluated without error); promtool checks the rules.
func TestPrometheusEvaluatesDashboard(t *testing.T) {
	if out, err := exec.Command("promtool", "check", "rules", alertsPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "watch@example.org", "watch pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(95, 12, 4000)}})
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0",
		"MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none")
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	captureByLogin(t, srv, imapAddr, user, pass)
	if err := sendDemoMail(smtpAddr, user, "<watched@example.net>"); err != nil {
		t.Fatal(err)
	}

	prom := startPrometheus(t, httpAddr)
	// Ready once a few scrapes are in (rate() needs two samples).
	waitQuery(t, prom, `count_over_time(mailcapture_accounts{state="captured"}[5m]) >= 3`)
	for _, q := range dashboardQueries(t) {
		if n := query(t, prom, q); n == 0 {
			t.Errorf("dashboard query returned no data: %s", q)
		}
	}
	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	getJSON(t, prom+"/api/v1/rules", &rules)
	count := 0
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			count++
			if r.Health == "err" {
				t.Errorf("alert %s: %s", r.Name, r.LastError)
			}
		}
	}
	if count != 4 {
		t.Errorf("Prometheus loaded %d alert rules, want 4", count)
	}
	srv.stop(t)
}

// startPrometheus runs a private Prometheus scraping target every second;
// it returns its base URL.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	dir := t.TempDir()
	alerts, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "alerts.yml"), alerts, 0o644)
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: mailcapture\n    static_configs:\n      - targets: [%q]\n", target)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command("prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logFile, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus (Debian package prometheus): %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	base := "http://" + addr
	for i := 0; ; i++ {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		if i == 300 {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("prometheus not ready within 30s:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// query evaluates an instant query and returns how many series it gave.
func query(t *testing.T, base, q string) int {
	t.Helper()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []json.RawMessage
		}
	}
	getJSON(t, base+"/api/v1/query?query="+url.QueryEscape(q), &r)
	if r.Status != "success" {
		t.Fatalf("query %s: %s", q, r.Error)
	}
	return len(r.Data.Result)
}

// waitQuery waits (bounded) until a query returns data.
func waitQuery(t *testing.T, base, q string) {
	t.Helper()
	for i := 0; query(t, base, q) == 0; i++ {
		if i == 600 {
			t.Fatalf("no data for %s within 60s", q)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
