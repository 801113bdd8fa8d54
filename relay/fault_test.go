package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"mailcapture/capture"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"

	"mailcapture/labels"
)

// countingObserver counts relay results.
type countingObserver struct{ results map[string]int }

func (o *countingObserver) SMTPMessage(route labels.SMTPRoute, result labels.SMTPResult) {
	o.results[string(route)+"/"+string(result)]++
}
func (o *countingObserver) Refused(limit labels.Limit) { o.results["refused/"+string(limit)]++ }

// TestInterruptedDeliveryArrivesOnce cuts the connection to the legacy
// LMTP server at two points of a delivery to two recipients: in the
// middle of the data (the server must not deliver), and right after the
// end of the data (the server delivers, its answer is lost). Once the
// fault is gone the queue delivers each message exactly once: after the
// lost answer it finds the message in both legacy INBOXes (with the
// master user) instead of sending it again. Without a way to look, the
// message is sent again and arrives twice, which the last case shows.
func TestInterruptedDeliveryArrivesOnce(t *testing.T) {
	for _, tc := range []struct {
		name      string
		marker    string
		checker   bool
		inDoubt   bool
		copies    int
		unchecked int
	}{
		// The queue cannot tell data that went into the kernel's buffers
		// from data the server read: in doubt, it looks, finds nothing
		// and sends the message (once).
		{"dropped in the middle of the data", "Subject: hi", true, true, 1, 0},
		{"answer lost after the end of the data", "\r\n.\r\n", true, true, 1, 0},
		{"answer lost, nothing to look with", "\r\n.\r\n", false, true, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := startWith(t, legacytest.Options{MasterUser: "admin", MasterPassword: "master pw"})
			proxy := legacytest.StartProxy(t, f.d.LMTPAddr)
			obs := &countingObserver{results: map[string]int{}}
			f.queue.Legacy.Address, f.queue.Observer = proxy.Addr, obs
			if tc.checker {
				f.queue.Checker = capture.InboxSearch{Endpoint: legacyclient.Endpoint{Address: f.d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second},
					Master: &legacyclient.MasterLogin{Username: "admin", Password: "master pw"}}
			}
			if out := f.smtplib(t, `send(["legacy@example.org", "sender@example.org"], "cut@example.net")`); out != "RCPT legacy@example.org 250\nRCPT sender@example.org 250\nDATA 250\n" {
				t.Fatalf("smtplib said:\n%s", out)
			}
			spooled, err := f.st.Spooled(ctx)
			if err != nil || len(spooled) != 1 {
				t.Fatalf("spool: %v, %v", spooled, err)
			}
			id := spooled[0].ID

			proxy.LoseReplyAfter([]byte(tc.marker))
			f.queue.pass(ctx)
			e, err := f.st.SpoolEntryByID(ctx, id)
			if err != nil || e.Attempts != 1 || e.LastError == "" {
				t.Fatalf("after the cut the message is not deferred: %+v, %v", e, err)
			}
			if got := f.st.InFlight(id); got != tc.inDoubt {
				t.Fatalf("in doubt after the cut: %v, want %v", got, tc.inDoubt)
			}

			proxy.LoseReplyAfter(nil)
			if _, err := f.st.RequestRetry(ctx, []int64{id}); err != nil {
				t.Fatal(err)
			}
			f.queue.pass(ctx)
			if n, _, _ := f.st.SpoolStats(ctx); n != 0 || f.st.InFlight(id) {
				t.Fatalf("spool holds %d messages (in doubt: %v) once the fault is gone", n, f.st.InFlight(id))
			}
			for _, rcpt := range []string{"legacy@example.org", "sender@example.org"} {
				copies := 0
				for _, m := range f.d.Snapshot(t, rcpt, "pw")["INBOX"].Messages {
					if strings.Contains(string(m.Body), "Message-ID: <cut@example.net>") {
						copies++
					}
				}
				if copies != tc.copies {
					t.Errorf("%s's legacy INBOX holds %d copies, want %d", rcpt, copies, tc.copies)
				}
			}
			if obs.results["legacy/delivered"] != 2 || obs.results["legacy/resent_unchecked"] != tc.unchecked {
				t.Errorf("relay counted %v", obs.results)
			}
		})
	}
}
