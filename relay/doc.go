// Package relay is the SMTP front end (the domain's new MX): routing at RCPT
// time, the legacy recipient check, the durable spool (package store) and
// the relay queue towards the legacy server, and local delivery.
package relay

// Observer counts SMTP messages by route ("local", "legacy", "held") and
// result ("accepted", "rejected", "deferred" at the front end; "delivered",
// "bounced" by the relay queue), and refusals by a limit;
// metrics.Traffic implements it.
type Observer interface {
	SMTPMessage(route, result string)
	Refused(limit string)
}
