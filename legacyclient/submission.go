package legacyclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SubmissionSession is a session at the legacy submission server,
// authenticated as the user: the user's mail for other domains goes out
// on it, and the legacy server's answer to each command is the user's.
type SubmissionSession struct {
	*smtp.Client
	Conn *Conn
}

// Close ends the session (QUIT, then the connection).
func (s *SubmissionSession) Close() error {
	s.Client.Quit()
	return s.Client.Close()
}

// LoginSubmission logs in at the legacy submission server: EHLO as
// hostname, STARTTLS when the endpoint says so (implicit TLS is the
// endpoint's), AUTH PLAIN with the credentials. A 535 (or any 5xx to
// AUTH) is ErrBadCredentials; a 4xx, a dropped connection or a silent
// server is ErrUnavailable or ErrTimeout (ClassifySMTP). ctx bounds the
// login only.
func LoginSubmission(ctx context.Context, ep Endpoint, cred Credentials, hostname string) (*SubmissionSession, error) {
	conn, err := ep.Dial(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	classify := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return ClassifySMTP(conn, err)
	}
	var c *smtp.Client
	if ep.TLS == "starttls" {
		// The EHLO before STARTTLS says "localhost"; the one after, which
		// the server keeps, says hostname.
		if c, err = smtp.NewClientStartTLS(conn, ep.ClientTLS()); err != nil {
			conn.Close()
			return nil, classify(fmt.Errorf("starttls: %w", err))
		}
	} else {
		c = smtp.NewClient(conn)
	}
	fail := func(err error) (*SubmissionSession, error) {
		c.Close()
		return nil, classify(err)
	}
	if hostname == "" {
		hostname = "localhost"
	}
	if err := c.Hello(hostname); err != nil {
		return fail(err)
	}
	if err := c.Auth(sasl.NewPlainClient(cred.Authzid, cred.Username, cred.Password)); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 {
			c.Close()
			return nil, fmt.Errorf("%w: %v", ErrBadCredentials, se)
		}
		return fail(err)
	}
	return &SubmissionSession{Client: c, Conn: conn}, nil
}

// ClassifySMTP reads a failed exchange with a legacy SMTP server: the
// watchdog's timeout is ErrTimeout; a temporary answer (4xx), a closed or
// reset connection is ErrUnavailable; a permanent answer is the server's
// *smtp.SMTPError, left as it is.
func ClassifySMTP(c *Conn, err error) error {
	var se *smtp.SMTPError
	var opErr *net.OpError
	switch {
	case err == nil:
		return nil
	case c != nil && c.TimedOut() && !errors.Is(err, ErrTimeout):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.As(err, &se) && se.Code >= 400 && se.Code < 500:
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case errors.As(err, &se):
		return err
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.As(err, &opErr):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
