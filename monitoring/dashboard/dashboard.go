// Package dashboard builds mailcapture's Grafana dashboard in Go (with
// Grafana's foundation SDK); monitoring/grafana/mailcapture-dashboard.json
// is its output, regenerated with `go generate ./monitoring/...`.
package dashboard

//go:generate go run ./gen ../grafana/mailcapture-dashboard.json

import (
	"encoding/json"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/gauge"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// datasource is the Prometheus chosen in the dashboard's variable.
var datasource = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// query is one series of a panel.
type query struct{ expr, legend string }

func series(title, desc, unit string, stacked bool, qs ...query) cog.Builder[dashboard.Panel] {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(datasource).Span(12).Height(8)
	if stacked {
		p = p.Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)).FillOpacity(30)
	}
	for _, q := range qs {
		p = p.WithTarget(prometheus.NewDataqueryBuilder().Expr(q.expr).LegendFormat(q.legend))
	}
	return p
}

func percentGauge(title, desc string, q query) cog.Builder[dashboard.Panel] {
	return gauge.NewPanelBuilder().Title(title).Description(desc).Unit("percent").Min(0).Max(100).Datasource(datasource).Span(6).Height(6).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		WithTarget(prometheus.NewDataqueryBuilder().Expr(q.expr).LegendFormat(q.legend))
}

func single(title, desc, unit string, q query) cog.Builder[dashboard.Panel] {
	return stat.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(datasource).Span(6).Height(6).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		WithTarget(prometheus.NewDataqueryBuilder().Expr(q.expr).LegendFormat(q.legend))
}

// JSON returns the dashboard, indented, with a final newline.
func JSON() ([]byte, error) {
	b := dashboard.NewDashboardBuilder("mailcapture migration").
		Uid("mailcapture").
		Tags([]string{"mailcapture", "mail"}).
		Refresh("30s").
		Time("now-24h", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus")).
		WithPanel(percentGauge("Overall progress: messages copied", "Share of the known accounts' legacy messages already in the local store.",
			query{"100 * (1 - sum(mailcapture_capture_messages_remaining) / clamp_min(sum(mailcapture_legacy_messages), 1))", "messages"})).
		WithPanel(percentGauge("Overall progress: bytes copied", "Share of the known accounts' legacy bytes already in the local store.",
			query{"100 * (1 - sum(mailcapture_capture_bytes_remaining) / clamp_min(sum(mailcapture_legacy_bytes), 1))", "bytes"})).
		WithPanel(single("Estimated time to finish", "Bytes still to copy divided by the copy rate of the last 15 minutes.", "s",
			query{"sum(mailcapture_capture_bytes_remaining) / clamp_min(sum(rate(mailcapture_capture_bytes_copied_total[15m])), 1)", "at the last 15 min's pace"})).
		WithPanel(single("Capture jobs running", "Account captures running now.", "short",
			query{"sum(mailcapture_capture_jobs_active)", "jobs"})).
		WithPanel(series("Accounts by state", "capturing: proxied to the legacy server while copied; cutover: being switched; captured: served from the store.", "short", true,
			query{"sum by (state) (mailcapture_accounts)", "{{state}}"})).
		WithPanel(series("Copy throughput", "Messages and bytes copied from the legacy server per second.", "short", false,
			query{"sum(rate(mailcapture_capture_messages_copied_total[5m]))", "messages/s"},
			query{"sum(rate(mailcapture_capture_bytes_copied_total[5m]))", "bytes/s"})).
		WithPanel(series("Logins by route and result", "local: served from the store; legacy: proxied.", "reqps", false,
			query{"sum by (protocol, route, result) (rate(mailcapture_logins_total[5m]))", "{{protocol}} {{route}} {{result}}"})).
		WithPanel(series("Active sessions", "Logged-in IMAP, POP3 and submission sessions.", "short", true,
			query{"sum by (protocol, route) (mailcapture_sessions_active)", "{{protocol}} {{route}}"})).
		WithPanel(series("SMTP messages by route and result", "Accepted, rejected and deferred at the front end; delivered and bounced by the relay queue.", "reqps", false,
			query{"sum by (route, result) (rate(mailcapture_smtp_messages_total[5m]))", "{{route}} {{result}}"})).
		WithPanel(series("Submissions by route and result", "Users' mail sent through listen.submission(s): local, held and legacy are colleagues (by their state), passthrough went out through the legacy submission server on the user's session, outbound was spooled for the outbound relay.", "reqps", false,
			query{"sum by (route, result) (rate(mailcapture_submissions_total[5m]))", "{{route}} {{result}}"},
			query{"sum by (limit) (rate(mailcapture_limit_refusals_total{limit=~\"submission_rate|sender_policy\"}[5m]))", "refused: {{limit}}"})).
		WithPanel(series("Relay queue", "Mail spooled for the legacy server or held during a cut-over, and the age of the oldest.", "short", false,
			query{"sum(mailcapture_relay_queue_messages)", "messages"},
			query{"max(mailcapture_relay_queue_oldest_age_seconds)", "oldest (s)"})).
		WithPanel(series("Legacy server errors", "Failed exchanges with the legacy server; the scheduler slows down when they rise.", "reqps", false,
			query{"sum by (kind) (rate(mailcapture_legacy_errors_total[5m]))", "{{kind}}"})).
		WithPanel(series("Refusals by limit", "Connections, logins and messages refused by a configured limit.", "reqps", false,
			query{"sum by (limit) (rate(mailcapture_limit_refusals_total[5m]))", "{{limit}}"})).
		WithPanel(series("Capture duration per account", "Time from the start of a capture to its verified convergence.", "s", false,
			query{"histogram_quantile(0.5, sum by (le) (rate(mailcapture_capture_duration_seconds_bucket[1h])))", "p50"},
			query{"histogram_quantile(0.95, sum by (le) (rate(mailcapture_capture_duration_seconds_bucket[1h])))", "p95"})).
		WithPanel(series("Store size", "Messages and bytes in the local store.", "short", false,
			query{"sum(mailcapture_store_messages)", "messages"},
			query{"sum(mailcapture_store_bytes)", "bytes"}))
	d, err := b.Build()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
