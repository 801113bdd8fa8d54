// Package legacyclient is mailcapture's one client of the legacy server: how to
// reach it (endpoints, every TLS mode, a watchdog on every connection),
// how to log in there (the user's own credentials or a master user's,
// LOGIN or AUTHENTICATE PLAIN), and one reading of its answers: refused
// credentials, a temporary failure, or a protocol failure. The capture
// engine, the login proxy and the relay all go through it.
package legacyclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"mailcapture/config"
	"mailcapture/watchdog"
)

// Endpoint is how to reach one of the legacy server's services.
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
	// stops answering fails the exchange after Timeout, never hangs it.
	// Default 1 minute.
	Timeout time.Duration
}

// Configured is the endpoint of a legacy service as the configuration
// names it: certificates verified unless legacy.tls_verify is off.
func Configured(addr, mode string, cfg config.Legacy) Endpoint {
	host, _, _ := net.SplitHostPort(addr)
	return Endpoint{
		Address:   addr,
		TLS:       mode,
		TLSConfig: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: !cfg.TLSVerify},
		Timeout:   cfg.Timeout,
	}
}

// Wait is the endpoint's timeout.
func (ep Endpoint) Wait() time.Duration {
	if ep.Timeout <= 0 {
		return time.Minute
	}
	return ep.Timeout
}

// ClientTLS is the TLS configuration to verify the server with.
func (ep Endpoint) ClientTLS() *tls.Config {
	if ep.TLSConfig != nil {
		return ep.TLSConfig.Clone()
	}
	host, _, _ := net.SplitHostPort(ep.Address)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

// Conn is a connection to the legacy server: TLS (if any) over a
// watchdog over TCP.
type Conn struct {
	net.Conn
	// Watch is the watchdog under it: its reads and writes fail after the
	// endpoint's timeout without progress, whatever deadlines the
	// protocol code sets.
	Watch *watchdog.Conn
}

// TimedOut tells whether the watchdog ended an exchange.
func (c *Conn) TimedOut() bool { return c.Watch.TimedOut() }

// Dial connects, with the TLS handshake for implicit TLS (STARTTLS is the
// protocol's, see StartTLS). Errors are classified (Classify).
func (ep Endpoint) Dial(ctx context.Context) (*Conn, error) {
	d := net.Dialer{Timeout: ep.Wait()}
	nc, err := d.DialContext(ctx, "tcp", ep.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	c := &Conn{Watch: watchdog.New(nc, ep.Wait())}
	c.Conn = c.Watch
	if ep.TLS == "implicit" {
		if err := c.StartTLS(ctx, ep); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// StartTLS runs the TLS handshake on the connection (after the
// protocol's STARTTLS, or at once for implicit TLS).
func (c *Conn) StartTLS(ctx context.Context, ep Endpoint) error {
	tc := tls.Client(c.Conn, ep.ClientTLS())
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	c.Conn = tc
	return nil
}
