package imapstore

import (
	"crypto/tls"
	"fmt"

	"github.com/emersion/go-imap/v2/imapserver"
)

// NewServer returns an IMAP server whose clients log in with the stored
// password of a captured account. insecureAuth allows LOGIN without TLS
// (the front end decides for trusted networks).
func NewServer(b *Backend, tlsConfig *tls.Config, insecureAuth bool) *imapserver.Server {
	return imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return b.NewSession(nil, nil), nil, nil // STARTTLS may replace the connection: no raw writes
		},
		Caps:         Caps,
		TLSConfig:    tlsConfig,
		InsecureAuth: insecureAuth,
		Logger:       slogLogger{b},
	})
}

// slogLogger sends imapserver's messages to the backend's logger.
type slogLogger struct{ b *Backend }

func (l slogLogger) Printf(format string, args ...any) {
	l.b.Log.Warn("imapserver", "msg", fmt.Sprintf(format, args...))
}
