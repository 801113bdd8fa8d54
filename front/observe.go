package front

import (
	"time"

	"mailcapture/labels"
)

// Observer is told about logins, sessions, refusals and legacy errors;
// metrics.Traffic implements it.
type Observer interface {
	Login(protocol labels.Protocol, route labels.Route, result labels.LoginResult)
	SessionStarted(protocol labels.Protocol, route labels.Route)
	SessionEnded(protocol labels.Protocol, route labels.Route)
	Refused(limit labels.Limit)
	// LegacyError counts a failed exchange with the legacy server.
	LegacyError(kind labels.LegacyKind)
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) Login(labels.Protocol, labels.Route, labels.LoginResult) {}
func (nopObserver) SessionStarted(labels.Protocol, labels.Route)            {}
func (nopObserver) SessionEnded(labels.Protocol, labels.Route)              {}
func (nopObserver) Refused(labels.Limit)                                    {}
func (nopObserver) LegacyError(labels.LegacyKind)                           {}

// Observed is the router's observer, one that observes nothing when none
// is set: front ends beside this package (submission) count through it.
func (r *Router) Observed() Observer { return r.observer() }

func (r *Router) observer() Observer {
	if r.Observer == nil {
		return nopObserver{}
	}
	return r.Observer
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
