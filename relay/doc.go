// Package relay is the SMTP front end (the domain's new MX): routing at RCPT
// time, the legacy recipient check, the durable spool (package store) and
// the relay queue towards the legacy server, and local delivery.
package relay

import "mailcapture/labels"

// Observer counts SMTP messages by route and result, and refusals by a
// limit; metrics.Traffic implements it.
type Observer interface {
	SMTPMessage(route labels.SMTPRoute, result labels.SMTPResult)
	Refused(limit labels.Limit)
}
