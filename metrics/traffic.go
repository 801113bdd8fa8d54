package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"mailcapture/labels"
	"mailcapture/status"
)

// Traffic counts what users and senders do: logins, sessions, SMTP
// messages, refusals by a limit, panics, and the legacy errors met on the
// way. It implements front.Observer and relay.Observer. Every label value
// is a labels constant, and every series is exported from the start.
type Traffic struct {
	logins   *prometheus.CounterVec
	sessions *prometheus.GaugeVec
	smtp     *prometheus.CounterVec
	submits  *prometheus.CounterVec
	refusals *prometheus.CounterVec
	panics   *prometheus.CounterVec
	// legacyErrors is shared with Capture.
	legacyErrors *prometheus.CounterVec
}

func newTraffic(reg prometheus.Registerer, legacyErrors *prometheus.CounterVec) *Traffic {
	t := &Traffic{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_logins_total",
			Help: "Logins, by protocol (imap, pop3, submission, managesieve), route (local: served from the store; legacy: checked at and proxied to the legacy server) and result (ok; failed: wrong credentials; limited: refused by the failed-login limits; moving: refused for now during a cut-over longer than the wait; unavailable: the legacy server could not check them now; error: a failure of mailcapture)."},
			[]string{"protocol", "route", "result"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mailcapture_sessions_active",
			Help: "Logged-in sessions now, by protocol and route."}, []string{"protocol", "route"}),
		smtp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_smtp_messages_total",
			Help: "SMTP messages by route (local, legacy, held; none: not a hosted domain) and result (accepted, rejected, deferred at the front end; delivered, retried, bounced, resent_unchecked, rerouted (held for a cut-over or delivered locally instead) by the relay queue)."},
			[]string{"route", "result"}),
		submits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_submissions_total",
			Help: "Messages users submitted, by route (local: a captured colleague's INBOX; held: a colleague in cut-over; legacy: a colleague not captured, through the legacy server's intake; passthrough: other domains, through the legacy submission server on the user's session; outbound: other domains, spooled for the outbound relay; none: refused before any route; a message with recipients on several routes counts on each) and result (accepted, rejected, deferred)."},
			[]string{"route", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_limit_refusals_total",
			Help: "Connections, logins, commands and messages refused by a configured limit, by limit."}, []string{"limit"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_session_panics_total",
			Help: "Commands that panicked (the session was ended and the stack logged), by protocol. Any is a defect."}, []string{"protocol"}),
		legacyErrors: legacyErrors,
	}
	for _, p := range labels.Protocols {
		t.panics.WithLabelValues(string(p))
		for _, r := range labels.Routes {
			t.sessions.WithLabelValues(string(p), string(r))
			for _, res := range labels.LoginResults {
				t.logins.WithLabelValues(string(p), string(r), string(res))
			}
		}
	}
	for _, r := range labels.SMTPRoutes {
		for _, res := range labels.SMTPResults {
			t.smtp.WithLabelValues(string(r), string(res))
		}
	}
	for _, r := range labels.SubmissionRoutes {
		for _, res := range labels.SubmissionResults {
			t.submits.WithLabelValues(string(r), string(res))
		}
	}
	for _, l := range labels.Limits {
		t.refusals.WithLabelValues(string(l))
	}
	reg.MustRegister(t.logins, t.sessions, t.smtp, t.submits, t.refusals, t.panics)
	return t
}

// Login counts a login attempt.
func (t *Traffic) Login(protocol labels.Protocol, route labels.Route, result labels.LoginResult) {
	t.logins.WithLabelValues(string(protocol), string(route), string(result)).Inc()
}

// SessionStarted counts a session in.
func (t *Traffic) SessionStarted(protocol labels.Protocol, route labels.Route) {
	t.sessions.WithLabelValues(string(protocol), string(route)).Inc()
}

// SessionEnded counts a session out.
func (t *Traffic) SessionEnded(protocol labels.Protocol, route labels.Route) {
	t.sessions.WithLabelValues(string(protocol), string(route)).Dec()
}

// SMTPMessage counts a message by route and result.
func (t *Traffic) SMTPMessage(route labels.SMTPRoute, result labels.SMTPResult) {
	t.smtp.WithLabelValues(string(route), string(result)).Inc()
}

// Submission counts a submitted message by route and result.
func (t *Traffic) Submission(route labels.SubmissionRoute, result labels.SubmissionResult) {
	t.submits.WithLabelValues(string(route), string(result)).Inc()
}

// Submissions reads the submission counters, for the status page.
func (t *Traffic) Submissions() *status.Submissions {
	out := &status.Submissions{Accepted: map[labels.SubmissionRoute]int64{}, Rejected: map[labels.SubmissionRoute]int64{},
		Deferred: map[labels.SubmissionRoute]int64{}, Logins: map[labels.LoginResult]int64{}}
	for _, r := range labels.SubmissionRoutes {
		out.Accepted[r] = value(t.submits.WithLabelValues(string(r), string(labels.SubmitAccepted)))
		out.Rejected[r] = value(t.submits.WithLabelValues(string(r), string(labels.SubmitRejected)))
		out.Deferred[r] = value(t.submits.WithLabelValues(string(r), string(labels.SubmitDeferred)))
	}
	for _, res := range labels.LoginResults {
		for _, r := range labels.Routes {
			out.Logins[res] += value(t.logins.WithLabelValues(string(labels.Submission), string(r), string(res)))
		}
	}
	out.RateLimited = value(t.refusals.WithLabelValues(string(labels.SubmissionRate)))
	out.SenderRefused = value(t.refusals.WithLabelValues(string(labels.SenderPolicy)))
	return out
}

// value reads a counter.
func value(c prometheus.Counter) int64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return int64(m.GetCounter().GetValue())
}

// Refused counts a refusal by a limit.
func (t *Traffic) Refused(limit labels.Limit) {
	t.refusals.WithLabelValues(string(limit)).Inc()
}

// Panicked counts a command that panicked.
func (t *Traffic) Panicked(protocol labels.Protocol) {
	t.panics.WithLabelValues(string(protocol)).Inc()
}

// LegacyError counts a failed exchange with the legacy server.
func (t *Traffic) LegacyError(kind labels.LegacyKind) {
	t.legacyErrors.WithLabelValues(string(kind)).Inc()
}
