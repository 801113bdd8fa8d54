package legacyclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"

	"mailcapture/labels"
)

// The readings of what the legacy server said.
var (
	// ErrBadCredentials: the server refused the user name or password.
	// It counts as a failed login; a capture stops for good.
	ErrBadCredentials = errors.New("legacy server refused the credentials")
	// ErrUnavailable: the server could not be asked now (refused or
	// dropped connection, a temporary answer such as IMAP NO
	// [UNAVAILABLE] or POP3 -ERR [SYS/TEMP]). The user gets a temporary
	// answer and no failed login is counted.
	ErrUnavailable = errors.New("legacy server unavailable")
	// ErrTimeout: the server did not answer within the timeout.
	ErrTimeout = errors.New("legacy server did not answer in time")
)

// Kind classifies an error from the legacy side (the kind label of
// mailcapture_legacy_errors_total); "" for an error that is not the legacy
// server's (the caller gave up).
func Kind(err error) labels.LegacyKind {
	var (
		certErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
		opErr    *net.OpError
	)
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return ""
	case errors.Is(err, ErrBadCredentials):
		return labels.LegacyAuth
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return labels.LegacyTimeout
	case errors.As(err, &certErr), errors.As(err, &hostErr), errors.As(err, &invalid), errors.As(err, &recErr), errors.As(err, &alertErr):
		return labels.LegacyTLS
	case errors.As(err, &opErr), errors.Is(err, net.ErrClosed):
		return labels.LegacyConnect
	case errors.Is(err, ErrUnavailable):
		return labels.LegacyUnavailable
	}
	return labels.LegacyProtocol
}

// Temporary tells whether a login that failed with err may succeed if
// tried again: anything but refused credentials.
func Temporary(err error) bool { return err != nil && !errors.Is(err, ErrBadCredentials) }
