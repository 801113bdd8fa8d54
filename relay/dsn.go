package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"mailcapture/store"
)

// Failure is one recipient a DSN reports as failed.
type Failure struct {
	Recipient string
	// Status is the enhanced status code, e.g. "5.1.1".
	Status string
	// Diagnostic is the remote server's answer, or why we gave up.
	Diagnostic string
}

// buildDSN writes a delivery status notification (RFC 3464, a
// multipart/report) for a spooled message back to its sender, with the
// original's header.
func buildDSN(hostname string, e store.SpoolEntry, original io.Reader, failures []Failure, now time.Time) []byte {
	var nonce [8]byte
	rand.Read(nonce[:])
	boundary := "mailcapture-dsn-" + hex.EncodeToString(nonce[:])
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", hostname)
	fmt.Fprintf(&b, "To: <%s>\r\n", e.From)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <dsn-%d-%s@%s>\r\n", e.ID, hex.EncodeToString(nonce[:4]), hostname)
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\n")
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=%q\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", boundary)
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\nYour message could not be delivered to the following recipients:\r\n\r\n", hostname)
	for _, f := range failures {
		fmt.Fprintf(&b, "<%s>: %s\r\n", f.Recipient, oneLine(f.Diagnostic))
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\n", hostname, e.ReceivedAt.Format(time.RFC1123Z))
	for _, f := range failures {
		fmt.Fprintf(&b, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\nDiagnostic-Code: smtp; %s\r\n",
			f.Recipient, f.Status, oneLine(f.Diagnostic))
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary)
	b.Write(headerOf(original))
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

// headerOf returns a message's header section (up to 64 KiB), CRLF ended.
func headerOf(r io.Reader) []byte {
	var out bytes.Buffer
	br := bufio.NewReader(io.LimitReader(r, 64<<10))
	for {
		line, err := br.ReadString('\n')
		if strings.TrimRight(line, "\r\n") == "" {
			break
		}
		out.WriteString(strings.TrimRight(line, "\r\n") + "\r\n")
		if err != nil {
			break
		}
	}
	return out.Bytes()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// enqueueDSN spools a DSN to the sender of e, from the null sender (so
// that it never bounces back). A message from the null sender gets none.
func (q *Queue) enqueueDSN(ctx context.Context, e store.SpoolEntry, failures []Failure) error {
	if e.From == "" || len(failures) == 0 {
		return nil
	}
	f, err := q.Store.OpenSpooled(e.ID)
	if err != nil {
		return err
	}
	defer f.Close()
	dsn := buildDSN(q.hostname(), e, f, failures, time.Now())
	// A sender whose account is captured gets it in its INBOX here.
	if acct, found, err := q.directory().AccountOf(ctx, e.From); err == nil && found && acct.State == store.StateCaptured {
		inbox, err := q.Store.MailboxByName(ctx, acct.ID, "INBOX")
		if err != nil {
			return err
		}
		_, err = q.Store.Append(ctx, inbox.ID, bytes.NewReader(dsn), nil, time.Now())
		return err
	}
	if _, err = q.Store.Enqueue(ctx, store.RouteLegacy, 0, store.Envelope{From: "", To: []string{e.From}}, bytes.NewReader(dsn)); err != nil {
		return err
	}
	q.Wake()
	return nil
}

func (q *Queue) hostname() string {
	if q.Legacy.Hostname != "" {
		return q.Legacy.Hostname
	}
	return "mailcapture"
}
