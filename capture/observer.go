package capture

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"time"

	"mailcapture/pop3"
)

// Observer receives capture events, for metrics. Its methods must be cheap
// and safe for concurrent use.
type Observer interface {
	// Copied counts messages and bytes committed to the store.
	Copied(messages int, bytes int64)
	// LegacyError counts a failed exchange with the legacy server, by kind
	// (see ErrorKind).
	LegacyError(kind string)
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
func (nopObserver) LegacyError(string)              {}
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

// Error kinds, the values of the kind label of legacy errors.
const (
	KindAuth     = "auth"     // credentials refused
	KindTimeout  = "timeout"  // no answer in time
	KindConnect  = "connect"  // connection refused or dropped
	KindTLS      = "tls"      // handshake or certificate failure
	KindProtocol = "protocol" // an answer that breaks the protocol or the copy
)

// ErrorKind classifies an error from the legacy side; "" for errors that
// are not the legacy server's (the job was cancelled).
func ErrorKind(err error) string {
	var (
		certErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
		opErr    *net.OpError
		popErr   *pop3.Error
	)
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return ""
	case errors.Is(err, ErrBadCredentials):
		return KindAuth
	case errors.Is(err, ErrTimeout), errors.Is(err, pop3.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	case errors.As(err, &certErr), errors.As(err, &hostErr), errors.As(err, &invalid), errors.As(err, &recErr), errors.As(err, &alertErr):
		return KindTLS
	case errors.As(err, &opErr), errors.Is(err, net.ErrClosed):
		return KindConnect
	case errors.As(err, &popErr):
		return KindProtocol
	}
	return KindProtocol
}
