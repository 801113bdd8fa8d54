package legacyclient

import (
	"context"
	"errors"
	"fmt"

	"mailcapture/pop3"
)

// LoginPOP3 connects to the POP3 endpoint and logs in (USER/PASS, or AUTH
// PLAIN for a master user acting for an account). A refusal of the
// credentials is ErrBadCredentials; -ERR [SYS/TEMP], [LOGIN-DELAY] and
// [IN-USE] are ErrUnavailable (RFC 3206; [IN-USE] also wraps
// pop3.ErrInUse); silence is ErrTimeout.
//
// The connection is closed if ctx ends before the login does; past it,
// the caller owns it.
func LoginPOP3(ctx context.Context, ep Endpoint, cred Credentials) (*pop3.Client, error) {
	conn, err := ep.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("legacy pop3 %s: %w", ep.Address, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, err := loginPOP3(conn, ep, cred)
	if !stop() && err == nil {
		c.Close()
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("legacy pop3 %s: login %s: %w", ep.Address, cred.Username, err)
	}
	return c, nil
}

func loginPOP3(conn *Conn, ep Endpoint, cred Credentials) (*pop3.Client, error) {
	c, err := pop3.NewClient(conn, ep.Wait())
	if err != nil {
		return nil, classifyPOP3(err, false)
	}
	if ep.TLS == "starttls" {
		if err := c.StartTLS(ep.ClientTLS()); err != nil {
			c.Close()
			return nil, classifyPOP3(err, false)
		}
	}
	login := func() error { return c.Login(cred.Username, cred.Password) }
	if cred.Authzid != "" {
		login = func() error { return c.AuthPlainAs(cred.Authzid, cred.Username, cred.Password) }
	}
	if err := login(); err != nil {
		c.Close()
		return nil, classifyPOP3(err, true)
	}
	return c, nil
}

// ClassifyPOP3 reads an error of a POP3 command after the login as the
// package's readings (silence is ErrTimeout).
func ClassifyPOP3(err error) error { return classifyPOP3(err, false) }

func classifyPOP3(err error, login bool) error {
	var perr *pop3.Error
	switch {
	case errors.Is(err, pop3.ErrTimeout):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.As(err, &perr) && !login:
		return err
	case errors.As(err, &perr):
		switch perr.Code {
		case "IN-USE":
			return fmt.Errorf("%w: %w: %s", ErrUnavailable, pop3.ErrInUse, perr.Text)
		case "SYS/TEMP", "LOGIN-DELAY":
			return fmt.Errorf("%w: %s", ErrUnavailable, perr.Text)
		}
		return fmt.Errorf("%w: %s", ErrBadCredentials, perr.Text)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
