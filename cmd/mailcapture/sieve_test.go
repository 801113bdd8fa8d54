package main

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"mailcapture/legacytest"
)

// filterScript is the users' Sieve script in TestSieveFiltersAsPigeonhole.
const filterScript = `require ["fileinto", "imap4flags", "vacation", "envelope", "subaddress", "variables", "copy", "body"];
# Mailing lists into their folder.
if header :contains "List-Id" "dev.lists.example.org" {
  fileinto "Lists/dev";
  stop;
}
if header :is "X-Spam-Flag" "YES" {
  fileinto :flags "\\Seen" "Junk";
  stop;
}
if envelope :detail "to" "tag" {
  addflag "$Tagged";
  fileinto "Tagged";
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
	id, from, tag, extra, body string
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
}

func (c filterCase) message(user string) []byte {
	body := c.body
	if body == "" {
		body = "hello\r\n"
	}
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: %s message\r\nMessage-ID: <%s-%s>\r\n%s\r\n%s", c.from, user, c.id, c.id, user, c.extra, body)
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
		if kind == "redirect" {
			reply = strings.Trim(headerValue(data, "Message-ID"), "<>")
		}
		reply, ok := strings.CutSuffix(reply, "-"+user)
		if !ok {
			continue
		}
		auto := strings.Fields(headerValue(data, "Auto-Submitted"))
		out = append(out, fmt.Sprintf("%s %s to %s: %q %v", kind, reply, strings.Join(m.To, ","), headerValue(data, "Subject"), auto[:min(1, len(auto))]))
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
		d.Populate(t, u, pass, []legacytest.Folder{{Name: "Lists/dev"}, {Name: "Tagged"}, {Name: "Junk"}})
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
	t.Logf("Pigeonhole sent %q", sentOut(legacySink.Messages(), "vic@example.org"))
	legacySent := sentOut(legacySink.Wait(t, 3), "vic@example.org")

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
	localSent := sentOut(localSink.Wait(t, 3), "wes@example.org")
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
	if n, m := len(legacySink.Messages()), len(localSink.Messages()); n != 3 || m != 3 {
		t.Errorf("sent: Pigeonhole %d messages, mailcapture %d, want 3 each", n, m)
	}
	srv.stop(t)
}
