package capture

import (
	"context"
	"errors"
	"fmt"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacyclient"
	"mailcapture/store"
)

// credentials returns the login for an account: its own password, or
// the master user when one is configured, under the name the legacy
// server knows it by (legacy.login_name; as typed: the name it last
// accepted).
func (e *Engine) credentials(acct store.Account, password string) legacyclient.Credentials {
	name := e.Naming.LegacyLogin(acct.LegacyLogin, acct.Name)
	m := e.Master
	if m == nil || m.Username == "" {
		return legacyclient.User(name, password)
	}
	return m.ActingFor(name)
}

// imapConn is one logged-in connection to the legacy IMAP server.
type imapConn struct {
	*imapclient.Client
	conn     *legacyclient.Conn
	stopCtx  func() bool
	endpoint legacyclient.Endpoint
}

// dialIMAP logs in at the legacy IMAP server (legacyclient.LoginIMAP: a refusal
// of the credentials is legacyclient.ErrBadCredentials). The connection is
// closed when ctx ends, which fails the command in progress.
func dialIMAP(ctx context.Context, ep legacyclient.Endpoint, cred legacyclient.Credentials) (*imapConn, error) {
	s, err := legacyclient.LoginIMAP(ctx, ep, cred)
	if err != nil {
		return nil, err
	}
	c := s.Client()
	conn := &imapConn{Client: c, conn: s.Conn, endpoint: ep}
	conn.stopCtx = context.AfterFunc(ctx, func() { c.Close() })
	return conn, nil
}

// Close logs nothing out; it drops the connection.
func (c *imapConn) Close() error {
	if c.stopCtx != nil {
		c.stopCtx()
	}
	return c.Client.Close()
}

// classify names the cause of a failed command: the job's context ended
// (which closes the connection), the legacy server fell silent, or what
// it answered.
func (c *imapConn) classify(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return legacyclient.ClassifyIMAP(c.conn, err)
}
