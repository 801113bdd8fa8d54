// Package relay is the SMTP front end (the domain's new MX): routing at RCPT
// time, the legacy recipient check, the durable spool (package store) and
// the relay queue towards the legacy server, and local delivery.
package relay
