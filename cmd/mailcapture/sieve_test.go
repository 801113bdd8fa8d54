package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
)

// filterScript is the users' Sieve script in TestSieveFiltersAsPigeonhole.
const filterScript = `require ["fileinto", "imap4flags", "vacation", "envelope", "subaddress", "variables", "copy", "body", "relational", "comparator-i;ascii-numeric", "reject"];
# Mailing lists into their folder.
if header :contains "List-Id" "dev.lists.example.org" {
  fileinto "Lists/dev";
  stop;
}
if address :domain :is "from" "spam.example" {
  discard;
  stop;
}
if header :contains "Subject" "reject me" {
  reject "I do not take such mail.";
  stop;
}
if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5" {
  fileinto "Junk";
  stop;
}
if exists "X-Priority" {
  addflag "\\Flagged";
}
if size :over 20K {
  fileinto "Big";
  stop;
}
if header :is "X-Spam-Flag" "YES" {
  fileinto :flags "\\Seen" "Junk";
  stop;
}
if envelope :detail "to" "tag" {
  addflag "$Tagged";
  fileinto "Étiquetés";
}
if body :contains "redirect-me" {
  redirect :copy "elsewhere@example.net";
}
if header :matches "Subject" "*" {
  set "subject" "${1}";
}
vacation :days 1 :subject "Away: ${subject}" "I am away until Monday.";
`

// filterCase is one message of the set: its sender, envelope recipient
// (the user's address, or with "+tag"), and extra header lines.
type filterCase struct {
	id, from, tag, extra, body, subject string
}

var filterCases = []filterCase{
	{id: "list", from: "alice@example.net", extra: "List-Id: Dev <dev.lists.example.org>\r\n"},
	{id: "tagged", from: "bob@example.net", tag: "+tag"},
	{id: "bulk", from: "news@example.net", extra: "Precedence: bulk\r\n"},
	{id: "first", from: "carol@example.net"},
	{id: "again", from: "carol@example.net"},
	{id: "spam", from: "eve@example.net", extra: "X-Spam-Flag: YES\r\n"},
	{id: "redirect", from: "dave@example.net", body: "please redirect-me\r\n"},
	{id: "daemon", from: "MAILER-DAEMON@example.net"},
	{id: "discarded", from: "x@spam.example"},
	{id: "rejected", from: "frank@example.net", subject: "please reject me"},
	{id: "scored", from: "gina@example.net", extra: "X-Spam-Score: 7\r\n"},
	{id: "priority", from: "hank@example.net", extra: "X-Priority: 1\r\n"},
	{id: "big", from: "ida@example.net", body: strings.Repeat("large body line\r\n", 2000)},
}

func (c filterCase) message(user string) []byte {
	body := c.body
	if body == "" {
		body = "hello\r\n"
	}
	subject := c.subject
	if subject == "" {
		subject = c.id + " message"
	}
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s-%s>\r\n%s\r\n%s", c.from, user, subject, c.id, user, c.extra, body)
}

// landed describes where each message of the set ended up for a user:
// "id: folder [flags]", sorted.
func landed(folders map[string]*legacytest.SnapshotFolder, user string) []string {
	var out []string
	for name, f := range folders {
		for _, m := range f.Messages {
			id := headerValue(string(m.Body), "Message-ID")
			kind, ok := strings.CutSuffix(strings.Trim(id, "<>"), "-"+user)
			if !ok {
				continue
			}
			var flags []string
			for _, fl := range m.Flags {
				if fl != `\Recent` {
					flags = append(flags, fl)
				}
			}
			out = append(out, fmt.Sprintf("%s: %s %v", kind, name, flags))
		}
	}
	slices.Sort(out)
	return out
}

// sentOut describes what a sink got for a user: "kind to <rcpt>: subject
// (auto-submitted, in reply to)", sorted.
func sentOut(msgs []legacytest.SinkMessage, user string) []string {
	var out []string
	for _, m := range msgs {
		data := string(m.Data)
		kind := "redirect"
		if m.From == "" {
			kind = "reply"
		}
		reply := strings.Trim(headerValue(data, "In-Reply-To"), "<>")
		switch {
		case kind == "redirect":
			reply = strings.Trim(headerValue(data, "Message-ID"), "<>")
		case reply == "":
			if m := regexp.MustCompile(`Original-Message-ID: <([^>]*)>`).FindStringSubmatch(data); m != nil {
				kind, reply = "rejection", m[1]
			}
		}
		reply, ok := strings.CutSuffix(reply, "-"+user)
		if !ok {
			continue
		}
		auto := strings.Fields(headerValue(data, "Auto-Submitted"))
		from := strings.ReplaceAll(headerValue(data, "From"), user, "USER")
		marks := strings.ReplaceAll(headerValue(data, "X-Sieve-Redirected-From"), user, "USER")
		out = append(out, fmt.Sprintf("%s %s to %s from %s %s: %q %v", kind, reply, strings.Join(m.To, ","), from, marks, headerValue(data, "Subject"), auto[:min(1, len(auto))]))
	}
	slices.Sort(out)
	return out
}

// TestSieveFiltersAsPigeonhole delivers one set of messages (a mailing
// list, a "+tag" address, bulk mail, a first-time sender while vacation
// is on and the same sender again, a spam-flagged one, one the script
// redirects, one from MAILER-DAEMON) to two users with the same script:
// vic at the legacy Dovecot, where Pigeonhole runs it, and wes, whose
// mailbox and script mailcapture captured from it, through mailcapture
// after his cut-over. Where each message ended (folder and flags) and
// which replies and redirects went out (to loopback sinks) must be the
// same.
func TestSieveFiltersAsPigeonhole(t *testing.T) {
	const pass = "sieve pass"
	legacySink, localSink := legacytest.StartSink(t), legacytest.StartSink(t)
	d := legacytest.Start(t, legacytest.Options{TLS: true, Sieve: true, SubmissionHost: legacySink.Addr, RecipientDelimiter: "+"})
	for _, u := range []string{"vic@example.org", "wes@example.org"} {
		d.AddUser(t, u, pass)
		d.Populate(t, u, pass, []legacytest.Folder{{Name: "Lists/dev"}, {Name: "Étiquetés"}, {Name: "Junk"}, {Name: "Big"}})
		d.PutSieve(t, u, "rules", []byte(filterScript), true)
	}
	send := func(addr string, lmtp bool, user string) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := smtp.NewClient(conn)
		if lmtp {
			c = smtp.NewClientLMTP(conn)
		}
		defer c.Close()
		if err := c.Hello("sender.example.net"); err != nil {
			t.Fatal(err)
		}
		for _, fc := range filterCases {
			local, domain, _ := strings.Cut(user, "@")
			if err := c.SendMail(fc.from, []string{local + fc.tag + "@" + domain}, strings.NewReader(string(fc.message(user)))); err != nil {
				t.Fatalf("%s to %s: %v", fc.id, user, err)
			}
		}
		c.Quit()
	}

	// The oracle: Pigeonhole at the legacy server.
	send(d.LMTPAddr, true, "vic@example.org")
	legacyLanded := landed(d.Snapshot(t, "vic@example.org", pass), "vic@example.org")
	legacySent := sentOut(legacySink.Wait(t, 5), "vic@example.org")

	// wes is captured (his folders and script) and cut over.
	certPath, keyPath, _ := writeCertificate(t, t.TempDir())
	path, _ := writeConfig(t, "")
	environ := []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=" + d.IMAPAddr, "MAILCAPTURE_LEGACY__TIMEOUT=10s",
		"MAILCAPTURE_LEGACY__MANAGESIEVE__ADDRESS=" + d.ManageSieveAddr, "MAILCAPTURE_LEGACY__TLS_VERIFY=false",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS=" + d.LMTPAddr, "MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp",
		"MAILCAPTURE_OUTBOUND__RELAY__ADDRESS=" + localSink.Addr, "MAILCAPTURE_OUTBOUND__RELAY__TLS=none",
		"MAILCAPTURE_TLS__CERT=" + certPath, "MAILCAPTURE_TLS__KEY=" + keyPath,
		"MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_SMTP__RETRY_MIN=1s",
	}
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	captureByLogin(t, srv, imapAddr, "wes@example.org", pass)
	send(smtpAddr, false, "wes@example.org")
	localSent := sentOut(localSink.Wait(t, 5), "wes@example.org")
	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("wes@example.org", pass).Wait(); err != nil {
		t.Fatal(err)
	}
	localLanded := landed(legacytest.SnapshotIMAP(t, c), "wes@example.org")
	c.Logout().Wait()

	t.Logf("Pigeonhole:\n  %s\n  %s", strings.Join(legacyLanded, "\n  "), strings.Join(legacySent, "\n  "))
	if fmt.Sprint(localLanded) != fmt.Sprint(legacyLanded) {
		t.Errorf("where the messages landed:\nmailcapture %q\nPigeonhole  %q", localLanded, legacyLanded)
	}
	if fmt.Sprint(localSent) != fmt.Sprint(legacySent) {
		t.Errorf("what went out:\nmailcapture %q\nPigeonhole  %q", localSent, legacySent)
	}
	// Nothing more went out for either (Pigeonhole sends during the
	// LMTP delivery; mailcapture's queue is drained).
	waitSpool(t, environ, path, 0)
	if n, m := len(legacySink.Messages()), len(localSink.Messages()); n != 5 || m != 5 {
		t.Errorf("sent: Pigeonhole %d messages, mailcapture %d, want 5 each", n, m)
	}
	srv.stop(t)
}

// sieveClient is a ManageSieve client in Python: STARTTLS, AUTHENTICATE
// PLAIN, then each argument as a command ("put NAME FILE", "check FILE",
// "active NAME", "list", "get NAME", "delete NAME", "rename A B",
// "space NAME SIZE"), printing each answer's first word and code, and
// what LISTSCRIPTS and GETSCRIPT returned.
const sieveClient = `
import socket, ssl, sys, base64, re
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.create_connection((host, port), timeout=30)
f = sock.makefile('rb')
def read_string(line):
    m = re.match(rb'\{(\d+)\+?\}\r\n$', line)
    if m:
        n = int(m.group(1))
        data = f.read(n)
        f.readline()
        return data
    return None
def response():
    data = []
    while True:
        line = f.readline()
        if not line:
            return 'EOF', data
        lit = read_string(line)
        if lit is not None:
            data.append(lit)
            continue
        word = line.split(b' ', 1)[0].decode()
        if word in ('OK', 'NO', 'BYE'):
            m = re.search(rb'\{(\d+)\+?\}\r\n$', line)
            if m:  # the text as a literal
                f.read(int(m.group(1)))
                f.readline()
            m = re.match(rb'\w+ \(([^)]*)\)', line)
            return word + (' ' + m.group(1).decode() if m else ''), data
        data.append(line.rstrip(b'\r\n'))
def send(cmd):
    sock.sendall(cmd)
    return response()
response()
send(b'STARTTLS\r\n')
sock = ssl._create_unverified_context().wrap_socket(sock, server_hostname=host)
f = sock.makefile('rb')
caps = response()
print('CAPS', b'"SASL"' in b' '.join(caps[1]), b'"SIEVE"' in b' '.join(caps[1]))
auth = base64.b64encode(('\0%s\0%s' % (user, password)).encode())
print('AUTH', send(b'AUTHENTICATE "PLAIN" "' + auth + b'"\r\n')[0])
def lit(b):
    return b'{%d+}\r\n' % len(b) + b
for op in sys.argv[5:]:
    w = op.split(' ')
    if w[0] == 'put':
        body = open(w[2], 'rb').read()
        r = send(b'PUTSCRIPT "' + w[1].encode() + b'" ' + lit(body) + b'\r\n')
    elif w[0] == 'check':
        r = send(b'CHECKSCRIPT ' + lit(open(w[1], 'rb').read()) + b'\r\n')
    elif w[0] == 'active':
        r = send(b'SETACTIVE "' + w[1].encode() + b'"\r\n')
    elif w[0] == 'list':
        r = send(b'LISTSCRIPTS\r\n')
        print('LIST', b' '.join(sorted(r[1])).decode())
    elif w[0] == 'get':
        r = send(b'GETSCRIPT "' + w[1].encode() + b'"\r\n')
        print('GOT', w[1], repr(r[1][0] if r[1] else b''))
    elif w[0] == 'delete':
        r = send(b'DELETESCRIPT "' + w[1].encode() + b'"\r\n')
    elif w[0] == 'rename':
        r = send(b'RENAMESCRIPT "' + w[1].encode() + b'" "' + w[2].encode() + b'"\r\n')
    elif w[0] == 'space':
        r = send(b'HAVESPACE "' + w[1].encode() + b'" ' + w[2].encode() + b'\r\n')
    print(op.split(' ')[0], w[1] if len(w) > 1 and w[0] != 'check' else '', r[0])
send(b'LOGOUT\r\n')
`

// TestManageSieveThroughMailcapture edits a user's scripts through
// mailcapture's ManageSieve listener with a Python client: before the
// cut-over the commands reach Pigeonhole (read back there), the final
// sync copies what was stored, after it the scripts are mailcapture's
// (checked before they are stored, bounded in size, active one applied
// at delivery) and Pigeonhole's stay as they were; a proxied session
// open across the cut-over is ended with BYE.
func TestManageSieveThroughMailcapture(t *testing.T) {
	const user, pass = "ms@example.org", "ms pass"
	d := legacytest.Start(t, legacytest.Options{TLS: true, Sieve: true})
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "Filed"}})
	dir := t.TempDir()
	files := map[string]string{
		"rules":   "require \"fileinto\";\r\nif header :contains \"Subject\" \"filed\" { fileinto \"Filed\"; }\r\n",
		"second":  "require [\"fileinto\", \"imap4flags\"];\r\nif header :contains \"Subject\" \"filed\" { fileinto :flags \"\\\\Flagged\" \"Filed\"; }\r\n",
		"invalid": "require \"fileinto\";\r\nfileinto \"x\"\r\n",
		"big":     "# " + strings.Repeat("x", 5000) + "\r\nkeep;\r\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := func(name string) string { return filepath.Join(dir, name) }
	certPath, keyPath, _ := writeCertificate(t, dir)
	path, _ := writeConfig(t, "")
	environ := []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=" + d.IMAPAddr, "MAILCAPTURE_LEGACY__TIMEOUT=10s",
		"MAILCAPTURE_LEGACY__MANAGESIEVE__ADDRESS=" + d.ManageSieveAddr, "MAILCAPTURE_LEGACY__TLS_VERIFY=false",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS=" + d.LMTPAddr, "MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp",
		"MAILCAPTURE_TLS__CERT=" + certPath, "MAILCAPTURE_TLS__KEY=" + keyPath, "MAILCAPTURE_SIEVE__MAX_SCRIPT_BYTES=4096",
		"MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__MANAGESIEVE=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0",
	}
	srv := startServe(t, path, environ)
	srv.forbid(pass)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	msAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.managesieve addr=(\S+)`))[1]
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	host, port, _ := net.SplitHostPort(msAddr)
	client := func(ops ...string) string {
		t.Helper()
		return python(t, sieveClient, append([]string{host, port, user, pass}, ops...)...)
	}
	expect := func(out string, lines ...string) {
		t.Helper()
		for _, l := range lines {
			if !strings.Contains(out, l+"\n") {
				t.Fatalf("no %q in:\n%s", l, out)
			}
		}
	}

	// Not captured: proxied to Pigeonhole.
	out := client("put bad "+file("invalid"), "put rules "+file("rules"), "active rules", "list", "get rules")
	expect(out, "CAPS True True", "AUTH OK", "put bad NO", "put rules OK", "active rules OK", `LIST "rules" ACTIVE`,
		fmt.Sprintf("GOT rules %s", pyBytes(files["rules"])))
	legacyScripts := func() map[string]string {
		t.Helper()
		s, err := legacyclient.LoginManageSieve(context.Background(), legacyclient.Endpoint{Address: d.ManageSieveAddr, TLS: "starttls",
			TLSConfig: &tls.Config{RootCAs: d.CertPool, ServerName: "127.0.0.1"}, Timeout: 10 * time.Second}, legacyclient.User(user, pass))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		list, err := s.ListScripts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, sc := range list {
			body, err := s.GetScript(context.Background(), sc.Name)
			if err != nil {
				t.Fatal(err)
			}
			got[sc.Name] = fmt.Sprint(sc.Active) + " " + string(body)
		}
		return got
	}
	if got := legacyScripts(); fmt.Sprint(got) != fmt.Sprint(map[string]string{"rules": "true " + files["rules"]}) {
		t.Fatalf("Pigeonhole holds %q", got)
	}

	// A proxied session open across the cut-over is ended between two
	// commands.
	open, err := legacyclient.LoginManageSieve(context.Background(), legacyclient.Endpoint{Address: msAddr, TLS: "starttls",
		TLSConfig: &tls.Config{InsecureSkipVerify: true}, Timeout: 10 * time.Second}, legacyclient.User(user, pass))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	captureByLogin(t, srv, imapAddr, user, pass)
	if _, err := open.ListScripts(context.Background()); !errors.Is(err, legacyclient.ErrUnavailable) {
		t.Fatalf("a proxied session after the cut-over: %v, want it ended", err)
	}

	// Captured: the copy of the scripts is mailcapture's now.
	out = client("list", "get rules", "put second "+file("second"), "check "+file("invalid"), "put big "+file("big"),
		"space big 5000", "active second", "delete second", "delete rules", "rename second third", "rename nope other", "list")
	expect(out, `LIST "rules" ACTIVE`, fmt.Sprintf("GOT rules %s", pyBytes(files["rules"])), "put second OK", "check  NO",
		"put big NO QUOTA/MAXSIZE", "space big NO QUOTA/MAXSIZE", "active second OK", "delete second NO ACTIVE", "delete rules OK",
		"rename second OK", "rename nope NO NONEXISTENT", `LIST "third" ACTIVE`)
	if got := legacyScripts(); fmt.Sprint(got) != fmt.Sprint(map[string]string{"rules": "true " + files["rules"]}) {
		t.Fatalf("Pigeonhole's scripts changed after the cut-over: %q", got)
	}
	// The active script ("third", was "second") files with a flag.
	if out := sendSMTP(t, smtpAddr, map[string][]string{"filed": {user}}); !strings.Contains(out, "DATA 250") {
		t.Fatalf("smtp: %s", out)
	}
	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	snap := legacytest.SnapshotIMAP(t, c)
	c.Logout().Wait()
	var where []string
	for name, f := range snap {
		for _, m := range f.Messages {
			if headerValue(string(m.Body), "Message-ID") == "<filed@example.net>" {
				where = append(where, fmt.Sprintf("%s %v", name, m.Flags))
			}
		}
	}
	if fmt.Sprint(where) != `[Filed [\Flagged]]` {
		t.Fatalf("the message the active script files landed in %q, want Filed with \\Flagged", where)
	}
	if code, out, _ := runCLI(t, environ, "accounts", "--config", path, "show", user); code != 0 || !strings.Contains(out, "sieve:       third (active: third)\n") {
		t.Fatalf("accounts show: exit %d\n%s", code, out)
	}
	srv.stop(t)
}

// pyBytes is how Python's repr prints a bytes value of s (ASCII, with
// CR, LF and backslashes escaped, single-quoted unless s has a quote).
func pyBytes(s string) string {
	r := strings.NewReplacer(`\`, `\\`, "\r", `\r`, "\n", `\n`, "\t", `\t`)
	q := "'"
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		q = `"`
	}
	return "b" + q + r.Replace(s) + q
}
