package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/status"
	"mailcapture/store"
)

// faultFixture is serve in front of a real Dovecot, with a fault proxy on
// the legacy IMAP connection (logins and captures) and one on the legacy
// LMTP connection (relayed mail).
type faultFixture struct {
	d                    *legacytest.Dovecot
	imapProxy, lmtpProxy *legacytest.Proxy
	srv                  *serveProcess
	imapAddr, smtpAddr   string
	httpAddr, path       string
	environ              []string
	dataDir              string
	acked                map[string]string // Message-ID -> recipient, for every 250
	pending              map[string]string // Message-ID -> recipient, refused with 4xx: sent again later
}

const faultUser, faultPass = "victim@example.org", "fault pass"

// startFaultFixture starts it all; dataDir, if set, is where serve keeps
// its store.
func startFaultFixture(t *testing.T, dataDir string) *faultFixture {
	t.Helper()
	d := legacytest.Start(t, legacytest.Options{MasterUser: "admin", MasterPassword: "master pw"})
	d.AddUser(t, faultUser, faultPass)
	d.AddUser(t, "legacy@example.org", "pw")
	big := legacytest.Message{Body: append([]byte("Subject: big\r\nMessage-ID: <big@legacy.example>\r\n\r\n"),
		bytes.Repeat([]byte("a line of a big message, in the middle of which a cut lands\r\n"), 20000)...)}
	d.Populate(t, faultUser, faultPass, []legacytest.Folder{
		{Name: "INBOX", Subscribed: true, Messages: append([]legacytest.Message{big}, legacytest.Generate(31, 60, 30000)...)},
		{Name: "Archive", Subscribed: true, Messages: legacytest.Generate(32, 40, 20000)}})
	f := &faultFixture{d: d, imapProxy: legacytest.StartProxy(t, d.IMAPAddr), lmtpProxy: legacytest.StartProxy(t, d.LMTPAddr),
		acked: map[string]string{}, pending: map[string]string{}}
	path, defaultDataDir, environ := bulkConfig(t, d)
	if dataDir == "" {
		dataDir = defaultDataDir
	} else {
		environ = append(environ, "MAILCAPTURE_DATA_DIR="+dataDir)
	}
	seedCapturedAccount(t, dataDir, "local@example.org")
	masterPW := filepath.Join(t.TempDir(), "master.pw")
	if err := os.WriteFile(masterPW, []byte("master pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.path, f.dataDir = path, dataDir
	f.environ = append(environ, "MAILCAPTURE_LEGACY__IMAP__ADDRESS="+f.imapProxy.Addr, "MAILCAPTURE_LEGACY__TIMEOUT=2s",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS="+f.lmtpProxy.Addr, "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none",
		"MAILCAPTURE_LEGACY__MASTER__USER=admin", "MAILCAPTURE_LEGACY__MASTER__PASSWORD_FILE="+masterPW,
		"MAILCAPTURE_CAPTURE__RETRY_MIN=200ms", "MAILCAPTURE_CAPTURE__RETRY_MAX=1s", "MAILCAPTURE_SMTP__RETRY_MIN=200ms", "MAILCAPTURE_SMTP__RETRY_MAX=1s",
		"MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0")
	f.srv = startServe(t, path, f.environ)
	f.srv.forbid(faultPass, "master pw")
	f.imapAddr = f.srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	f.smtpAddr = f.srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	f.httpAddr = f.srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	return f
}

// login logs the user in through serve. A fault of the legacy server may
// make it fail, but only with [UNAVAILABLE]: never an answer that makes a
// client ask for the password again.
func (f *faultFixture) login(t *testing.T) error {
	t.Helper()
	c, err := imapclient.DialInsecure(f.imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Login(faultUser, faultPass).Wait()
	if err != nil && !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("login during a legacy fault: %v (want OK or NO [UNAVAILABLE])", err)
	}
	return err
}

// send sends one message to rcpt. A fault of ours may defer it (4xx),
// never refuse it (5xx).
func (f *faultFixture) send(t *testing.T, rcpt, id string) {
	t.Helper()
	err := sendOne(f.smtpAddr, rcpt, id)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		f.acked["<"+id+">"] = rcpt
		delete(f.pending, id)
	case errors.As(err, &se) && se.Code >= 400 && se.Code < 500:
		f.pending[id] = rcpt
	default:
		t.Fatalf("SMTP to %s during a legacy fault: %v (want 250 or 4xx)", rcpt, err)
	}
}

func sendOne(addr, rcpt, id string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("sender.example.net"); err != nil {
		return err
	}
	if err := c.Mail("sender@example.net", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Message-ID: <%s>\r\nSubject: during a fault\r\n\r\n%s", id, strings.Repeat("body line\r\n", 500))
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// scrape returns the value of one sample of /metrics (0 when absent).
func (f *faultFixture) scrape(t *testing.T, sample string) float64 {
	t.Helper()
	body := scrape(t, "http://"+f.httpAddr+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

func (f *faultFixture) report(t *testing.T) status.Report {
	t.Helper()
	var r status.Report
	if err := json.Unmarshal([]byte(scrape(t, "http://"+f.httpAddr+"/status.json")), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLegacyFaultsCostNothing injects each fault of the legacy server
// while a user logs in (starting a capture) and mail arrives for both
// routes: connections dropped in the middle of a FETCH, of a literal, of
// a LOGIN and after an LMTP DATA; a server that hangs, one that answers
// slowly, one that refuses connections, and one restarted with a new
// UIDVALIDITY. For each: the user gets OK or NO [UNAVAILABLE], senders
// get 250 or 4xx (never 5xx), the metrics and the status page show the
// problem, and once the fault ends everything resumes by itself: the
// account is captured exactly (folders, UIDVALIDITY, UIDs, flags, bytes),
// and every acknowledged message is stored exactly once.
func TestLegacyFaultsCostNothing(t *testing.T) {
	type fault struct {
		name  string
		apply func(t *testing.T, f *faultFixture)
		end   func(t *testing.T, f *faultFixture)
		// shows is the log line the fault causes (nil: none, for a fault
		// that only slows things down).
		shows *regexp.Regexp
		// metric is the /metrics sample that counts it.
		metric string
	}
	legacyDown := regexp.MustCompile(`level=(WARN|ERROR).*(capture|legacy server could not check a login|relay)`)
	for _, tc := range []fault{
		{name: "connection dropped in the middle of a FETCH",
			apply: func(t *testing.T, f *faultFixture) { f.imapProxy.CutAfter(6000) },
			end:   func(t *testing.T, f *faultFixture) { f.imapProxy.CutAfter(0) },
			shows: regexp.MustCompile(`level=WARN msg="capture failed; will resume".*account=` + regexp.QuoteMeta(faultUser)), metric: `mailcapture_legacy_errors_total{kind="protocol"}`},
		{name: "connection dropped in the middle of a literal",
			apply: func(t *testing.T, f *faultFixture) { f.imapProxy.CutAfter(400 << 10) },
			end:   func(t *testing.T, f *faultFixture) { f.imapProxy.CutAfter(0) },
			shows: regexp.MustCompile(`level=WARN msg="capture failed; will resume".*account=` + regexp.QuoteMeta(faultUser)), metric: `mailcapture_legacy_errors_total{kind="protocol"}`},
		{name: "connection dropped in the middle of a LOGIN",
			apply: func(t *testing.T, f *faultFixture) { f.imapProxy.LoseReplyAfter([]byte(" LOGIN ")) },
			end:   func(t *testing.T, f *faultFixture) { f.imapProxy.LoseReplyAfter(nil) },
			shows: regexp.MustCompile(`level=WARN msg="the legacy server could not check a login`), metric: `mailcapture_logins_total{protocol="imap",result="unavailable",route="legacy"}`},
		{name: "connection dropped after the data of a relayed message",
			apply: func(t *testing.T, f *faultFixture) { f.lmtpProxy.LoseReplyAfter([]byte("\r\n.\r\n")) },
			end:   func(t *testing.T, f *faultFixture) { f.lmtpProxy.LoseReplyAfter(nil) },
			shows: regexp.MustCompile(`level=WARN msg="the legacy server did not take a spooled message; it will be tried again".*in_doubt=true`), metric: `mailcapture_smtp_messages_total{result="retried",route="legacy"}`},
		{name: "server hangs",
			apply: func(t *testing.T, f *faultFixture) { f.imapProxy.SetHanging(true); f.lmtpProxy.SetHanging(true) },
			end:   func(t *testing.T, f *faultFixture) { f.imapProxy.SetHanging(false); f.lmtpProxy.SetHanging(false) },
			shows: legacyDown, metric: `mailcapture_logins_total{protocol="imap",result="unavailable",route="legacy"}`},
		{name: "server answers slowly",
			apply: func(t *testing.T, f *faultFixture) {
				f.imapProxy.SetDelay(20 * time.Millisecond)
				f.lmtpProxy.SetDelay(20 * time.Millisecond)
			},
			end: func(t *testing.T, f *faultFixture) { f.imapProxy.SetDelay(0); f.lmtpProxy.SetDelay(0) }},
		{name: "server refuses connections",
			apply: func(t *testing.T, f *faultFixture) {
				f.imapProxy.SetRefusing(t, true)
				f.lmtpProxy.SetRefusing(t, true)
			},
			end: func(t *testing.T, f *faultFixture) {
				f.imapProxy.SetRefusing(t, false)
				f.lmtpProxy.SetRefusing(t, false)
			},
			shows: legacyDown, metric: `mailcapture_logins_total{protocol="imap",result="unavailable",route="legacy"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFaultFixture(t, "")
			tc.apply(t, f)
			loginErr := f.login(t)
			f.send(t, "legacy@example.org", "legacy-1@fault.example")
			f.send(t, "local@example.org", "local-1@fault.example")
			if tc.shows != nil {
				f.srv.waitFor(tc.shows)
				if n := f.scrape(t, tc.metric); n == 0 {
					t.Errorf("%s is 0 during the fault", tc.metric)
				}
				if len(f.report(t).Problems) == 0 {
					t.Errorf("the status page shows no problem during the fault")
				}
			}
			tc.end(t, f)
			if loginErr != nil {
				if err := f.login(t); err != nil {
					t.Fatalf("login after the fault: %v", err)
				}
			}
			f.finish(t)
		})
	}
}

// TestLegacyRestartWithNewUIDValidity restarts the legacy server in the
// middle of a capture, having lost the indexes of the folders the capture
// has partly copied: they come back with new UIDVALIDITYs and renumbered
// UIDs. The capture resumes by itself, copies them again under their new
// UIDVALIDITY, and the result is exact, with no duplicate.
func TestLegacyRestartWithNewUIDValidity(t *testing.T) {
	f := startFaultFixture(t, "")
	old := f.d.Snapshot(t, faultUser, faultPass)
	// Each capture connection is cut after 1.3 MiB of the 1.5 MiB: the
	// capture gets part of INBOX in, then fails; the legacy server then
	// goes away until it restarts.
	f.imapProxy.CutAfter(1300 << 10)
	if err := f.login(t); err != nil {
		t.Fatal(err)
	}
	// The messages that came in whole before a cut are kept; attempts go
	// on until one has kept some (bounded).
	failed := regexp.MustCompile(`level=WARN msg="capture failed; will resume".*account=` + regexp.QuoteMeta(faultUser))
	var victim status.Account
	for attempt := 0; attempt < 20 && victim.StoredMessages == 0; attempt++ {
		f.srv.waitFor(failed)
		for _, a := range f.report(t).AccountList {
			if a.Name == faultUser {
				victim = a
			}
		}
	}
	f.imapProxy.SetRefusing(t, true)
	for _, a := range f.report(t).AccountList {
		if a.Name == faultUser {
			victim = a
		}
	}
	if victim.State != store.StateCapturing || victim.StoredMessages == 0 || victim.StoredMessages >= victim.LegacyMessages {
		t.Fatalf("before the restart the capture should have copied part of the mailbox: %+v", victim)
	}
	t.Logf("%d of %d messages copied when the legacy server restarts", victim.StoredMessages, victim.LegacyMessages)
	f.d.Restart(t, func() {
		f.d.ForgetUIDs(t, faultUser, "INBOX")
		f.d.ForgetUIDs(t, faultUser, "Archive")
	})
	now := f.d.Snapshot(t, faultUser, faultPass)
	if now["INBOX"].UIDValidity == old["INBOX"].UIDValidity || now["Archive"].UIDValidity == old["Archive"].UIDValidity {
		t.Fatalf("UIDVALIDITY kept across the restart: INBOX %d, Archive %d", now["INBOX"].UIDValidity, now["Archive"].UIDValidity)
	}
	f.imapProxy.SetRefusing(t, false)
	f.imapProxy.CutAfter(0)
	f.send(t, "legacy@example.org", "legacy-1@fault.example")
	f.send(t, "local@example.org", "local-1@fault.example")
	f.finish(t)
}

// finish waits for the capture to end in a cut-over and the relay queue to
// empty, sends again what was deferred, and checks the outcome.
func (f *faultFixture) finish(t *testing.T) {
	t.Helper()
	for id, rcpt := range f.pending {
		f.send(t, rcpt, id)
		if _, still := f.pending[id]; still {
			t.Fatalf("SMTP to %s still deferred after the fault", rcpt)
		}
	}
	f.srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=` + regexp.QuoteMeta(faultUser)))
	for i := 0; f.report(t).Spool.Messages > 0; i++ {
		if i == 300 {
			t.Fatalf("the relay queue did not empty after the fault: %+v", f.report(t).Spool)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c, err := imapclient.DialInsecure(f.imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(faultUser, faultPass).Wait(); err != nil {
		t.Fatal(err)
	}
	local := legacytest.SnapshotIMAP(t, c)
	c.Close()
	assertSameSnapshot(t, f.d.Snapshot(t, faultUser, faultPass), local)
	f.srv.stop(t)

	counts := map[string]int{}
	for _, id := range storedMessageIDs(t, f.dataDir, "local@example.org") {
		counts[id]++
	}
	for _, m := range f.d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages {
		counts[headerValue(string(m.Body), "Message-ID")]++
	}
	for id := range f.acked {
		if counts[id] != 1 {
			t.Errorf("acknowledged message %s stored %d times", id, counts[id])
		}
	}
	if len(f.acked) != 2 {
		t.Errorf("%d messages acknowledged, want 2", len(f.acked))
	}
}

// TestLocalDiskFullCostsNothing fills the disk under the store while a
// user's login starts a capture and mail arrives for both routes: senders
// get 451, never a 5xx; the user gets OK or NO [UNAVAILABLE]; the failed
// capture passes are counted and the status page shows the problem. Once
// space is back, the capture finishes exactly and the mail sent again is
// stored once.
func TestLocalDiskFullCostsNothing(t *testing.T) {
	mnt := scratchfs.MustMount(t, 16)
	f := startFaultFixture(t, filepath.Join(mnt, "data"))
	filler := filepath.Join(mnt, "filler")
	// No room for a message: both routes answer 451.
	scratchfs.Fill(t, mnt, filler, 1<<10)
	f.send(t, "legacy@example.org", "legacy-1@fault.example")
	f.send(t, "local@example.org", "local-1@fault.example")
	if len(f.pending) != 2 {
		t.Errorf("%d of 2 messages deferred on a full disk", len(f.pending))
	}
	if n := f.scrape(t, `mailcapture_smtp_messages_total{result="deferred",route="local"}`); n != 1 {
		t.Errorf("local deliveries deferred: %v, want 1", n)
	}
	if problems := f.report(t).Problems; len(problems) == 0 {
		t.Errorf("the status page shows no problem on a full disk")
	} else {
		t.Logf("status page: %s: %s", problems[0].Message, problems[0].Error)
	}
	// Room for the account, not for its mail: the capture fails.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	scratchfs.Fill(t, mnt, filler, 600<<10)
	if err := f.login(t); err != nil {
		t.Fatal(err)
	}
	f.srv.waitFor(regexp.MustCompile(`level=WARN msg="capture failed; will resume".*account=` + regexp.QuoteMeta(faultUser) + `.*no space left on device`))
	if n := f.scrape(t, "mailcapture_capture_failures_total"); n == 0 {
		t.Errorf("mailcapture_capture_failures_total is 0 on a full disk")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	f.finish(t)
}
