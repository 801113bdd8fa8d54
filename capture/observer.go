package capture

import (
	"time"

	"mailcapture/labels"
)

// Observer receives capture events, for metrics. Its methods must be cheap
// and safe for concurrent use.
type Observer interface {
	// Copied counts messages and bytes committed to the store.
	Copied(messages int, bytes int64)
	// LegacyError counts a failed exchange with the legacy server, by kind
	// (legacyclient.Kind).
	LegacyError(kind labels.LegacyKind)
	// VerificationMismatches counts disagreements a verification found.
	VerificationMismatches(n int)
	// PassFailed counts a capture pass that failed, whatever the cause
	// (the legacy server, a full disk, ...).
	PassFailed()
	// JobStarted and JobFinished bracket a scheduled job; ready tells
	// whether it ended converged and verified.
	JobStarted()
	JobFinished(ready bool, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Copied(int, int64)               {}
func (nopObserver) LegacyError(labels.LegacyKind)   {}
func (nopObserver) VerificationMismatches(int)      {}
func (nopObserver) PassFailed()                     {}
func (nopObserver) JobStarted()                     {}
func (nopObserver) JobFinished(bool, time.Duration) {}

func (e *Engine) observer() Observer {
	if e.Observer == nil {
		return nopObserver{}
	}
	return e.Observer
}
