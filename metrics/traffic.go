package metrics

import "github.com/prometheus/client_golang/prometheus"

// Traffic counts what users and senders do: logins, sessions, SMTP
// messages and refusals by a limit. It implements front.Observer and
// relay.Observer.
type Traffic struct {
	logins   *prometheus.CounterVec
	sessions *prometheus.GaugeVec
	smtp     *prometheus.CounterVec
	refusals *prometheus.CounterVec
	panics   *prometheus.CounterVec
}

// The label values exported from the start, so that dashboards show zeros
// rather than gaps.
var (
	protocols    = []string{"imap", "pop3"}
	routes       = []string{"local", "legacy"}
	loginResults = []string{"ok", "failed", "limited", "error"}
	smtpRoutes   = []string{"local", "legacy", "held", "none"}
	smtpResults  = []string{"accepted", "rejected", "deferred", "delivered", "bounced"}
	limits       = []string{"connections_per_address", "connections", "failed_logins", "timeout", "line_length", "unknown_command", "smtp_hops", "smtp_recipients", "smtp_size"}
)

func newTraffic(reg prometheus.Registerer) *Traffic {
	t := &Traffic{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_logins_total",
			Help: "IMAP and POP3 logins, by protocol, route (local: served from the store; legacy: proxied) and result (ok, failed, limited, error; moving: refused for now during a cut-over longer than the wait)."},
			[]string{"protocol", "route", "result"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mailcapture_sessions_active",
			Help: "Logged-in IMAP and POP3 sessions now, by protocol and route."}, []string{"protocol", "route"}),
		smtp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_smtp_messages_total",
			Help: "SMTP messages by route (local, legacy, held; none: not a hosted domain) and result (accepted, rejected, deferred at the front end; delivered, retried, bounced, resent_unchecked, rerouted (held for a cut-over instead) by the relay queue)."},
			[]string{"route", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_limit_refusals_total",
			Help: "Connections, logins and messages refused by a configured limit, by limit."}, []string{"limit"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailcapture_session_panics_total",
			Help: "Commands that panicked (the session was ended and the stack logged), by protocol (imap, pop3). Any is a defect."}, []string{"protocol"}),
	}
	for _, p := range protocols {
		for _, r := range routes {
			t.sessions.WithLabelValues(p, r)
			for _, res := range loginResults {
				t.logins.WithLabelValues(p, r, res)
			}
		}
	}
	for _, r := range smtpRoutes {
		for _, res := range smtpResults {
			t.smtp.WithLabelValues(r, res)
		}
	}
	for _, l := range limits {
		t.refusals.WithLabelValues(l)
	}
	for _, p := range protocols {
		t.panics.WithLabelValues(p)
	}
	reg.MustRegister(t.logins, t.sessions, t.smtp, t.refusals, t.panics)
	return t
}

// Login counts a login attempt.
func (t *Traffic) Login(protocol, route, result string) {
	t.logins.WithLabelValues(protocol, route, result).Inc()
}

// SessionStarted counts a session in.
func (t *Traffic) SessionStarted(protocol, route string) {
	t.sessions.WithLabelValues(protocol, route).Inc()
}

// SessionEnded counts a session out.
func (t *Traffic) SessionEnded(protocol, route string) {
	t.sessions.WithLabelValues(protocol, route).Dec()
}

// SMTPMessage counts a message by route and result.
func (t *Traffic) SMTPMessage(route, result string) {
	t.smtp.WithLabelValues(route, result).Inc()
}

// Refused counts a refusal by a limit.
func (t *Traffic) Refused(limit string) {
	t.refusals.WithLabelValues(limit).Inc()
}

// Panicked counts a command that panicked.
func (t *Traffic) Panicked(protocol string) {
	t.panics.WithLabelValues(protocol).Inc()
}
