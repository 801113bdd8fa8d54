package relay

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailcapture/legacyclient"
)

// Legacy is the legacy server's mail intake, reached over SMTP or LMTP
// through the one legacy client (every TLS mode, the watchdog).
type Legacy struct {
	legacyclient.Endpoint
	// Protocol is "smtp" or "lmtp".
	Protocol string
	// Hostname is sent in EHLO/LHLO.
	Hostname string
	// Username and Password, if set, authenticate (AUTH PLAIN) after the
	// greeting (and TLS): the outbound relay may want it.
	Username, Password string
}

// dial connects and greets. The connection is closed when ctx ends (a
// stop, or the caller's deadline), whatever the exchange is waiting for;
// call the returned stop once done with the client.
func (l Legacy) dial(ctx context.Context) (*smtp.Client, func() bool, error) {
	conn, err := l.Endpoint.Dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	var c *smtp.Client
	switch {
	case l.Protocol == "lmtp":
		c = smtp.NewClientLMTP(conn)
	case l.TLS == "starttls":
		if c, err = smtp.NewClientStartTLS(conn, l.ClientTLS()); err != nil {
			stop()
			conn.Close()
			return nil, nil, err
		}
	default:
		c = smtp.NewClient(conn)
	}
	host := l.Hostname
	if host == "" {
		host = "localhost"
	}
	if err := c.Hello(host); err != nil {
		stop()
		c.Close()
		return nil, nil, err
	}
	if l.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", l.Username, l.Password)); err != nil {
			stop()
			c.Close()
			return nil, nil, fmt.Errorf("auth: %w", err)
		}
	}
	return c, stop, nil
}

// CheckRecipient asks the legacy server whether it takes mail for rcpt.
// A refusal is the server's *smtp.SMTPError (passed on to the sender at
// RCPT time); any other error means the server could not be asked.
func (l Legacy) CheckRecipient(ctx context.Context, rcpt string) error {
	c, stop, err := l.dial(ctx)
	if err != nil {
		return fmt.Errorf("legacy smtp %s: %w", l.Address, err)
	}
	defer stop()
	defer c.Close()
	if err := c.Mail("", nil); err != nil {
		return fmt.Errorf("legacy smtp MAIL: %w", err)
	}
	err = c.Rcpt(rcpt, nil)
	c.Reset()
	c.Quit()
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 {
		return se
	}
	if err != nil {
		return fmt.Errorf("legacy smtp RCPT: %w", err)
	}
	return nil
}

// Delivery is the outcome of one relay attempt.
type Delivery struct {
	// Refused holds recipients the legacy server refused for good.
	Refused map[string]*smtp.SMTPError
	// Retry holds recipients to try again later.
	Retry []string
	// Err is the reason for Retry.
	Err error
	// Uncertain: the connection failed after the end of the data was sent,
	// so the legacy server may have taken the message for the recipients
	// in Retry.
	Uncertain bool
}

// Deliver relays one message to the legacy server.
func (l Legacy) Deliver(ctx context.Context, from string, to []string, body io.Reader) Delivery {
	res := Delivery{Refused: map[string]*smtp.SMTPError{}}
	c, stop, err := l.dial(ctx)
	if err != nil {
		return Delivery{Retry: to, Err: err}
	}
	defer stop()
	defer c.Close()
	if err := c.Mail(from, nil); err != nil {
		return Delivery{Retry: to, Err: err}
	}
	var accepted []string
	for _, rcpt := range to {
		err := c.Rcpt(rcpt, nil)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			accepted = append(accepted, rcpt)
		case errors.As(err, &se) && se.Code >= 500:
			res.Refused[rcpt] = se
		default:
			res.Retry = append(res.Retry, rcpt)
			res.Err = err
		}
	}
	if len(accepted) == 0 {
		return res
	}
	w, err := c.Data()
	if err != nil {
		return Delivery{Refused: res.Refused, Retry: append(res.Retry, accepted...), Err: err}
	}
	if _, err := io.Copy(w, body); err != nil {
		return Delivery{Refused: res.Refused, Retry: append(res.Retry, accepted...), Err: err}
	}
	if l.Protocol == "lmtp" {
		_, err = w.CloseWithLMTPResponse()
		var lerr smtp.LMTPDataError
		if errors.As(err, &lerr) {
			for rcpt, se := range lerr {
				if se.Code >= 500 {
					res.Refused[rcpt] = se
				} else {
					res.Retry = append(res.Retry, rcpt)
					res.Err = se
				}
			}
			err = nil
		}
	} else {
		err = w.Close()
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 {
			for _, rcpt := range accepted {
				res.Refused[rcpt] = se
			}
		} else {
			// An SMTP answer is certain; a failed connection is not.
			res.Retry, res.Err, res.Uncertain = append(res.Retry, accepted...), err, !errors.As(err, &se)
		}
		return res
	}
	c.Quit()
	return res
}
