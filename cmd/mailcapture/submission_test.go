package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"mailcapture/labels"
	"mailcapture/legacytest"
	"mailcapture/status"
)

// swaks runs swaks and returns its transcript and exit code.
func swaks(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("swaks", append([]string{"--timeout", "30"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	return string(out), code
}

// python runs a Python script with arguments and returns what it printed.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	out, err := exec.Command("python3", append([]string{"-c", script}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}

// submitChecks is a Python script run against listen.submission: what a
// client that skips TLS gets, then STARTTLS and a login as argv[3] with
// argv[4], with AUTH LOGIN (initial response) or PLAIN (none) as argv[5],
// and one message per remaining argument "id:from:headerfrom:rcpt,rcpt",
// printing each command's code.
const submitChecks = `
import smtplib, ssl, sys, base64
host, port, user, password, mech = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo('client.example.net')
print('CLEAR-AUTH-OFFERED', s.has_extn('auth'))
print('CLEAR-AUTH', s.docmd('AUTH', 'PLAIN ' + base64.b64encode(('\0%s\0%s' % (user, password)).encode()).decode())[0])
print('CLEAR-MAIL', s.docmd('MAIL', 'FROM:<%s>' % user)[0])
s.starttls(context=ssl._create_unverified_context())
s.ehlo('client.example.net')
print('TLS-AUTH', s.esmtp_features.get('auth', '').strip())
print('TLS-MAIL-BEFORE-AUTH', s.docmd('MAIL', 'FROM:<%s>' % user)[0])
s.rset()
s.user, s.password = user, password
if mech == 'LOGIN':
    code = s.auth('LOGIN', s.auth_login)[0]
else:
    code = s.auth('PLAIN', s.auth_plain, initial_response_ok=False)[0]
print('AUTH', code)
for spec in sys.argv[6:]:
    mid, sender, hfrom, rcpts = spec.split(':')
    code = s.docmd('MAIL', 'FROM:<%s>' % sender)[0]
    print(mid, 'MAIL', code)
    if code != 250:
        s.rset()
        continue
    ok = False
    for r in rcpts.split(','):
        code = s.docmd('RCPT', 'TO:<%s>' % r)[0]
        print(mid, 'RCPT', r, code)
        ok = ok or code == 250
    if ok:
        print(mid, 'DATA', s.data('From: <%s>\r\nMessage-ID: <%s@example.org>\r\nSubject: %s\r\n\r\nhello\r\n' % (hfrom, mid, mid))[0])
    s.rset()
s.quit()
`

// loginCode tries one login at listen.submission (STARTTLS, AUTH PLAIN:
// smtplib's login would try LOGIN too after a 535) and prints the
// server's code.
const loginCode = `
import smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.starttls(context=ssl._create_unverified_context())
s.ehlo('client.example.net')
s.user, s.password = sys.argv[3], sys.argv[4]
try:
    print('AUTH', s.auth('PLAIN', s.auth_plain)[0])
except smtplib.SMTPAuthenticationError as e:
    print('AUTH', e.smtp_code)
except smtplib.SMTPResponseException as e:
    print('AUTH', e.smtp_code)
s.quit()
`

// sinkIDs returns the sink's messages as "Message-ID -> recipients".
func sinkIDs(msgs []legacytest.SinkMessage) map[string]string {
	out := map[string]string{}
	for _, m := range msgs {
		out[headerValue(string(m.Data), "Message-ID")] += strings.Join(m.To, ",")
	}
	return out
}

// TestSubmissionThroughEachRoute runs the domain's real submission path:
// a Dovecot with TLS as the legacy server and a Postfix in front of it
// whose submission service checks passwords through Dovecot's auth
// service and relays mail for other domains to a sink that stands in for
// the outside world. Users submit through mailcapture with swaks (LOGIN
// over STARTTLS, PLAIN over implicit TLS) and smtplib, before and after
// their cut-over; where each message landed is read from the sink, the
// local store and the legacy mailboxes.
func TestSubmissionThroughEachRoute(t *testing.T) {
	const pass = "submit pass"
	d := legacytest.Start(t, legacytest.Options{TLS: true})
	for _, u := range []string{"bob@example.org", "alice@example.org", "carol@example.org"} {
		d.AddUser(t, u, pass)
	}
	d.Populate(t, "bob@example.org", pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(81, 3, 2000)}})
	sink := legacytest.StartSink(t)
	pf := legacytest.StartPostfix(t, legacytest.PostfixOptions{LMTPAddr: d.LMTPAddr, Domain: "example.org",
		Users:      []string{"bob@example.org", "alice@example.org", "carol@example.org"},
		Submission: &legacytest.PostfixSubmission{Auth: d, RelayHost: sink.Addr}})
	// The submission path at the legacy server works as such.
	if out, code := swaks(t, "--server", pf.SubmissionAddr, "--tls", "--auth", "PLAIN", "--auth-user", "carol@example.org", "--auth-password", pass,
		"--from", "carol@example.org", "--to", "direct@example.net", "--header", "Message-Id: <direct@example.org>"); code != 0 {
		t.Fatalf("swaks straight to the legacy submission server: exit %d\n%s", code, out)
	}
	sink.Wait(t, 1)

	dir := t.TempDir()
	certPath, keyPath, _ := writeCertificate(t, dir)
	// Loopback is not trusted here: AUTH only after TLS.
	path, dataDir := writeConfig(t, "trusted_networks: [192.0.2.0/24]\n")
	environ := []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=" + d.IMAPAddr, "MAILCAPTURE_LEGACY__TIMEOUT=10s",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS=" + pf.Addr, "MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=smtp",
		"MAILCAPTURE_LEGACY__SUBMISSION__ADDRESS=" + pf.SubmissionAddr, "MAILCAPTURE_LEGACY__TLS_VERIFY=false",
		"MAILCAPTURE_TLS__CERT=" + certPath, "MAILCAPTURE_TLS__KEY=" + keyPath,
		"MAILCAPTURE_LISTEN__SUBMISSION=127.0.0.1:0", "MAILCAPTURE_LISTEN__SUBMISSIONS=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0",
		"MAILCAPTURE_SUBMISSION__MAX_MESSAGES_PER_HOUR=4",
		"MAILCAPTURE_LIMITS__FAILED_LOGINS_PER_ACCOUNT=2", "MAILCAPTURE_LIMITS__FAILED_LOGINS_PER_ADDRESS=100",
	}
	srv := startServe(t, path, environ)
	srv.forbid(pass)
	subAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.submission addr=(\S+)`))[1]
	subsAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.submissions addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	host, port, _ := net.SplitHostPort(subAddr)

	// bob, not captured: LOGIN over STARTTLS, to a colleague not captured
	// (through the legacy MX into her legacy mailbox) and to the outside
	// world (through the legacy submission server on bob's session). His
	// login starts his capture.
	out, code := swaks(t, "--server", subAddr, "--tls", "--auth", "LOGIN", "--auth-user", "bob@example.org", "--auth-password", pass,
		"--from", "bob@example.org", "--to", "alice@example.org,ext1@example.net", "--header", "Message-Id: <a1@example.org>")
	if code != 0 || !strings.Contains(out, "<~  250") {
		t.Fatalf("swaks --tls --auth LOGIN as bob: exit %d\n%s", code, out)
	}
	srv.waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=bob@example.org`))

	// alice, not captured: PLAIN over implicit TLS, to bob (captured: his
	// local INBOX, not his legacy one) and the outside world.
	out, code = swaks(t, "--server", subsAddr, "--tlsc", "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", pass,
		"--from", "alice@example.org", "--to", "bob@example.org,ext2@example.net", "--header", "Message-Id: <a2@example.org>")
	if code != 0 {
		t.Fatalf("swaks --tlsc --auth PLAIN as alice: exit %d\n%s", code, out)
	}

	// bob, captured: smtplib with STARTTLS; what a client that skips TLS
	// gets; the sender policy; his hourly allowance of 4 (a1 was one).
	out = python(t, submitChecks, host, port, "bob@example.org", pass, "LOGIN",
		"a3:bob@example.org:bob@example.org:carol@example.org,ext3@example.net",
		"forged1:alice@example.org:alice@example.org:carol@example.org",
		"forged2:bob@example.org:alice@example.org:carol@example.org",
		"a4:bob+sent@example.org:bob@example.org:ext4@example.net",
		"a5:bob@example.org:bob@example.org:ext5@example.net",
		"a6:bob@example.org:bob@example.org:ext6@example.net")
	for _, want := range []string{"CLEAR-AUTH-OFFERED False", "CLEAR-AUTH 538", "CLEAR-MAIL 530", "TLS-AUTH PLAIN LOGIN", "TLS-MAIL-BEFORE-AUTH 530", "AUTH 235",
		"a3 DATA 250", "forged1 RCPT carol@example.org 553", "forged2 DATA 553", "a4 DATA 250", "a5 DATA 250", "a6 MAIL 450"} {
		if !strings.Contains(out, want+"\n") {
			t.Fatalf("smtplib as bob: no %q in\n%s", want, out)
		}
	}
	// PLAIN without an initial response, for a captured account.
	out = python(t, submitChecks, host, port, "bob@example.org", pass, "PLAIN")
	if !strings.Contains(out, "AUTH 235\n") {
		t.Fatalf("AUTH PLAIN without an initial response:\n%s", out)
	}

	// carol, not captured: two wrong passwords get 535 and count; then
	// the right one is refused by the limit.
	var codes []string
	for _, pw := range []string{"wrong", "wrong again", pass} {
		codes = append(codes, strings.TrimSpace(python(t, loginCode, host, port, "carol@example.org", pw)))
	}
	if strings.Join(codes, ",") != "AUTH 535,AUTH 535,AUTH 454" {
		t.Fatalf("carol's logins: %v, want 535, 535, then 454 (limited)", codes)
	}

	// Where each message landed.
	got := sinkIDs(sink.Wait(t, 6))
	want := map[string]string{"<direct@example.org>": "direct@example.net", "<a1@example.org>": "ext1@example.net", "<a2@example.org>": "ext2@example.net",
		"<a3@example.org>": "ext3@example.net", "<a4@example.org>": "ext4@example.net", "<a5@example.org>": "ext5@example.net"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the outside world got %v, want %v", got, want)
	}
	for _, m := range sink.Messages() {
		if id := headerValue(string(m.Data), "Message-ID"); id != "<direct@example.org>" && (!strings.Contains(string(m.Data), "by legacy-mta.example.org (Postfix) with ESMTPSA") || !strings.HasPrefix(m.From, "bob") && m.From != "alice@example.org") {
			t.Errorf("%s did not leave through the legacy submission server on its user's session: MAIL FROM %s\n%s", id, m.From, m.Data)
		}
	}
	if ids := waitLegacy(t, d, "alice@example.org", pass, 1); fmt.Sprint(ids) != "[<a1@example.org>]" {
		t.Errorf("alice's legacy INBOX: %v, want a1", ids)
	}
	if ids := waitLegacy(t, d, "carol@example.org", pass, 1); fmt.Sprint(ids) != "[<a3@example.org>]" {
		t.Errorf("carol's legacy INBOX: %v, want a3 (not the forged ones)", ids)
	}
	if local := localMessageIDs(t, dataDir, "bob@example.org"); count(local, "<a2@example.org>") != 1 || len(local) != 4 {
		t.Errorf("bob's local INBOX: %v, want the 3 captured and a2", local)
	}
	if ids := legacyMessageIDs(t, d, "bob@example.org", pass); count(ids, "<a2@example.org>") != 0 {
		t.Errorf("a2 reached bob's legacy INBOX after his cut-over: %v", ids)
	}

	metrics := scrape(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{
		`mailcapture_logins_total{protocol="submission",result="failed",route="legacy"} 2`,
		`mailcapture_logins_total{protocol="submission",result="limited",route="legacy"} 1`,
		`mailcapture_limit_refusals_total{limit="submission_rate"} 1`,
		`mailcapture_limit_refusals_total{limit="sender_policy"} 2`,
		`mailcapture_submissions_total{result="accepted",route="passthrough"} 5`,
		`mailcapture_submissions_total{result="accepted",route="local"} 1`,
		`mailcapture_submissions_total{result="accepted",route="legacy"} 2`,
		`mailcapture_submissions_total{result="rejected",route="legacy"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics: no %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(metrics, "submission"))
	}
	checkDeclaredLabels(t, metrics)
	var report status.Report
	if err := json.Unmarshal([]byte(scrape(t, "http://"+httpAddr+"/status.json")), &report); err != nil || report.Submissions == nil {
		t.Fatalf("/status.json: %v %+v", err, report.Submissions)
	}
	if s := report.Submissions; s.Accepted[labels.SubmitPassthrough] != 5 || s.Accepted[labels.SubmitLocal] != 1 || s.Logins[labels.LoginFailed] != 2 ||
		s.RateLimited != 1 || s.SenderRefused != 2 {
		t.Errorf("the status page's submissions: %+v", s)
	}
	srv.stop(t)
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// submitLoad is a Python script: parallel smtplib senders that log in at
// listen.submission and submit 10 KB messages, in turn to the outside
// world alone and to the outside world and a local colleague, printing
// "OK message-id" for each 250, until the server goes away.
const submitLoad = `
import smtplib, sys, threading
host, port, prefix, senders = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lock = threading.Lock()
def say(*words):
    with lock:
        print(*words, flush=True)
def send(w):
    i = 0
    try:
        s = smtplib.SMTP(host, port, timeout=20)
        s.login('sender@example.org', 'pw')
        while True:
            to = [["out-%d@example.net" % w], ["out-%d@example.net" % w, "local@example.org"]][i % 2]
            mid = "%s-%d-%d@example.org" % (prefix, w, i)
            s.sendmail("sender@example.org", to, "From: sender@example.org\r\nMessage-ID: <%s>\r\nSubject: load\r\n\r\n%s" % (mid, ("x" * 76 + "\r\n") * 130))
            say("OK", mid, len(to))
            i += 1
    except Exception as e:
        say("STOP", w, type(e).__name__)
threads = [threading.Thread(target=send, args=(w,)) for w in range(senders)]
for t in threads: t.start()
for t in threads: t.join()
`

// TestOutboundRelaySurvivesSIGKILL kills serve with SIGKILL while users
// submit through the outbound relay (the legacy server retired), five
// times: every message that got a 250 reaches the outside world (a
// sink), and the copy for a local colleague is in her INBOX exactly once.
func TestOutboundRelaySurvivesSIGKILL(t *testing.T) {
	const rounds = 5
	sink := legacytest.StartSink(t)
	path, dataDir := writeConfig(t, "")
	seedCapturedAccount(t, dataDir, "sender@example.org")
	seedCapturedAccount(t, dataDir, "local@example.org")
	environ := []string{"MAILCAPTURE_LEGACY__RETIRED=true", "MAILCAPTURE_OUTBOUND__RELAY__ADDRESS=" + sink.Addr, "MAILCAPTURE_OUTBOUND__RELAY__TLS=none",
		"MAILCAPTURE_LISTEN__SUBMISSION=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_SUBMISSION__MAX_MESSAGES_PER_HOUR=100000",
		"MAILCAPTURE_SMTP__RETRY_MIN=1s", childEnv + "=1"}
	acked := map[string]int{} // Message-ID -> copies
	spooledAtKills := 0
	rng := rand.New(rand.NewPCG(5, 3))
	for round := 0; round < rounds; round++ {
		child, addrs := startChild(t, path, environ)
		host, port, _ := net.SplitHostPort(addrs["listen.submission"])
		killLoadedChild(t, round, child, 20+rng.IntN(100), func(f []string) {
			if len(f) == 3 && f[0] == "OK" {
				acked["<"+f[1]+">"] = map[string]int{"1": 1, "2": 2}[f[2]]
			}
		}, submitLoad, host, port, fmt.Sprintf("r%d", round), "10")
		child.Wait()
		spooledAtKills += len(spooledRows(t, environ, path))
	}
	if spooledAtKills == 0 {
		t.Fatal("no kill left a message in the spool: the test proved nothing about the outbound relay's queue")
	}
	// A last run drains the spool.
	child, _ := startChild(t, path, environ)
	waitSpool(t, environ, path, 0)
	child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Fatalf("serve after the kills: %v", err)
	}
	outside := map[string]int{}
	for _, m := range sink.Messages() {
		outside[headerValue(string(m.Data), "Message-ID")]++
	}
	local := map[string]int{}
	for _, id := range storedMessageIDs(t, dataDir, "local@example.org") {
		local[id]++
	}
	lost, localDup, outsideDup := 0, 0, 0
	for id, copies := range acked {
		if outside[id] == 0 || copies == 2 && local[id] == 0 {
			lost++
		}
	}
	for _, n := range local {
		localDup += max(0, n-1)
	}
	for _, n := range outside {
		outsideDup += max(0, n-1)
	}
	t.Logf("%d kills (%d messages in the spool after them); %d messages acknowledged; %d reached the outside world (%d twice: sent when a kill came before the spool recorded it), %d a local colleague",
		rounds, spooledAtKills, len(acked), len(outside), outsideDup, len(local))
	if lost > 0 || localDup > 0 {
		t.Fatalf("after %d kills: %d acknowledged messages lost, %d local duplicates", rounds, lost, localDup)
	}
}

// killLoadedChild runs a Python load script (args after the script),
// hands each line it prints, split in words, to said, and kills child
// with SIGKILL once killAfter lines began with "OK"; it returns once the
// load has stopped (because the server went away) and fails the test if
// the load ended before the kill.
func killLoadedChild(t *testing.T, round int, child *exec.Cmd, killAfter int, said func(words []string), script string, args ...string) {
	t.Helper()
	load := exec.Command("python3", append([]string{"-c", script}, args...)...)
	out, err := load.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	load.Stderr = os.Stderr
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	n, killed := 0, false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "STOP" && !killed {
			t.Logf("round %d: %s", round, sc.Text())
		}
		said(f)
		if f[0] == "OK" {
			n++
		}
		if n >= killAfter && !killed {
			child.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	if err := load.Wait(); err != nil {
		t.Fatalf("round %d: senders: %v", round, err)
	}
	if !killed {
		t.Fatalf("round %d: the senders stopped before the kill", round)
	}
}
