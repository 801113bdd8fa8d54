package capture

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"mailcapture/watchdog"
)

// Endpoint is how to reach a legacy server.
type Endpoint struct {
	// Address is host:port.
	Address string
	// TLS is "none", "starttls" or "implicit".
	TLS string
	// TLSConfig verifies the server; nil means the system roots with the
	// address's host name.
	TLSConfig *tls.Config
	// Timeout bounds each exchange: connecting, and every wait for bytes
	// from the server or for the server to take ours. A legacy server that
	// stops answering fails the job after Timeout, never hangs it.
	Timeout time.Duration
}

func (ep Endpoint) timeout() time.Duration {
	if ep.Timeout <= 0 {
		return time.Minute
	}
	return ep.Timeout
}

func (ep Endpoint) tlsConfig() *tls.Config {
	if ep.TLSConfig != nil {
		return ep.TLSConfig.Clone()
	}
	host, _, _ := net.SplitHostPort(ep.Address)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

// credentials are what the engine logs in with: the user's own password,
// or a master user acting for the account.
type credentials struct {
	username string
	password string
	// authzid, when set, is the account a master user acts for, sent as
	// SASL PLAIN's authorization identity.
	authzid string
}

// MasterLogin lets the engine log in to every account with one legacy
// master user, for accounts nobody logs into.
type MasterLogin struct {
	Username string
	Password string
	// Style is "separator" (default: LOGIN "account*master", Dovecot's
	// auth_master_user_separator) or "sasl" (AUTHENTICATE PLAIN with the
	// account as authorization identity).
	Style string
	// Separator is used with the "separator" style. Default "*".
	Separator string
}

// credentials returns the login for account: its own password, or the
// master user when one is configured.
func (e *Engine) credentials(account, password string) credentials {
	m := e.Master
	if m == nil || m.Username == "" {
		return credentials{username: account, password: password}
	}
	return m.actingFor(account)
}

// actingFor is the master user's login for account.
func (m *MasterLogin) actingFor(account string) credentials {
	if m.Style == "sasl" {
		return credentials{username: m.Username, password: m.Password, authzid: account}
	}
	sep := m.Separator
	if sep == "" {
		sep = "*"
	}
	return credentials{username: account + sep + m.Username, password: m.Password}
}

// Errors that decide what the scheduler does with a failed job.
var (
	// ErrBadCredentials: the legacy server refused the password. The job
	// stops and is not retried.
	ErrBadCredentials = errors.New("legacy server refused the credentials")
	// ErrTimeout: the legacy server did not answer within the timeout.
	ErrTimeout = errors.New("legacy server did not answer in time")
)

// imapConn is one logged-in connection to the legacy IMAP server.
type imapConn struct {
	*imapclient.Client
	raw      *watchdog.Conn
	stopCtx  func() bool
	endpoint Endpoint
}

// dialIMAP connects, upgrades to TLS as configured and logs in. A refusal
// of the credentials is ErrBadCredentials. The connection is closed when
// ctx ends, which fails the command in progress.
func dialIMAP(ctx context.Context, ep Endpoint, cred credentials) (*imapConn, error) {
	d := net.Dialer{Timeout: ep.timeout()}
	nc, err := d.DialContext(ctx, "tcp", ep.Address)
	if err != nil {
		return nil, fmt.Errorf("legacy imap %s: %w", ep.Address, err)
	}
	if ep.TLS == "implicit" {
		tc := tls.Client(nc, ep.tlsConfig())
		tc.SetDeadline(time.Now().Add(ep.timeout()))
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("legacy imap %s: tls: %w", ep.Address, err)
		}
		tc.SetDeadline(time.Time{})
		nc = tc
	}
	raw := watchdog.New(nc, ep.timeout())
	opts := &imapclient.Options{TLSConfig: ep.tlsConfig()}
	var c *imapclient.Client
	if ep.TLS == "starttls" {
		c, err = imapclient.NewStartTLS(raw, opts)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("legacy imap %s: starttls: %w", ep.Address, classify(raw, err))
		}
	} else {
		c = imapclient.New(raw, opts)
	}
	conn := &imapConn{Client: c, raw: raw, endpoint: ep}
	conn.stopCtx = context.AfterFunc(ctx, func() { c.Close() })
	if err := c.WaitGreeting(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("legacy imap %s: greeting: %w", ep.Address, conn.classify(ctx, err))
	}
	if err := conn.login(cred); err != nil {
		conn.Close()
		return nil, fmt.Errorf("legacy imap %s: login %s: %w", ep.Address, cred.username, conn.classify(ctx, err))
	}
	return conn, nil
}

// login uses LOGIN, or AUTHENTICATE PLAIN where the server disables LOGIN
// or a master user acts for the account.
func (c *imapConn) login(cred credentials) error {
	if cred.authzid != "" || c.Caps().Has(imap.CapLoginDisabled) {
		return c.Authenticate(sasl.NewPlainClient(cred.authzid, cred.username, cred.password))
	}
	return c.Login(cred.username, cred.password).Wait()
}

// Close logs nothing out; it drops the connection.
func (c *imapConn) Close() error {
	if c.stopCtx != nil {
		c.stopCtx()
	}
	return c.Client.Close()
}

// classify turns a command error into one the scheduler can act on.
func (c *imapConn) classify(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return classify(c.raw, err)
}

func classify(raw *watchdog.Conn, err error) error {
	if raw != nil && raw.TimedOut() {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo &&
		(ie.Code == imap.ResponseCodeAuthenticationFailed || ie.Code == imap.ResponseCodeAuthorizationFailed || ie.Code == "") {
		return fmt.Errorf("%w: %s", ErrBadCredentials, ie.Text)
	}
	return err
}
