package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
)

// TestServeLimitsConnections: connections from one address are bounded
// over all listeners, each refused in its protocol's words, and the
// refusals, logins and sessions show in the metrics.
func TestServeLimitsConnections(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "limits@example.org", "limits pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(91, 3, 2000)}})
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__POP3=127.0.0.1:0",
		"MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0", "MAILCAPTURE_LIMITS__CONNECTIONS_PER_ADDRESS=3", "MAILCAPTURE_MODE=shadow")
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	pop3Addr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.pop3 addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]

	greeting := func(addr string) (net.Conn, string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("greeting from %s: %v", addr, err)
		}
		return c, line
	}
	client, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	var open []net.Conn
	for range 2 {
		c, line := greeting(imapAddr)
		if !strings.HasPrefix(line, "* OK") {
			t.Fatalf("connection within the limit got %q", line)
		}
		open = append(open, c)
	}
	if _, line := greeting(imapAddr); !strings.HasPrefix(line, "* BYE [UNAVAILABLE]") {
		t.Fatalf("4th IMAP connection got %q", line)
	}
	if _, line := greeting(pop3Addr); !strings.HasPrefix(line, "-ERR [SYS/TEMP]") {
		t.Fatalf("POP3 connection over the shared limit got %q", line)
	}
	// LOGOUT, then read to the server's close: the slot is released right
	// after it (the bounded retry covers that instant only).
	io.WriteString(open[0], "a LOGOUT\r\n")
	if rest, err := io.ReadAll(open[0]); err != nil || !strings.Contains(string(rest), "a OK") {
		t.Fatalf("LOGOUT: %q %v", rest, err)
	}
	for i := 0; ; i++ {
		_, line := greeting(pop3Addr)
		if strings.HasPrefix(line, "+OK") {
			break
		}
		if i == 50 || !strings.HasPrefix(line, "-ERR [SYS/TEMP]") {
			t.Fatalf("after a close, POP3 got %q", line)
		}
	}

	metrics := scrape(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{
		`mailcapture_logins_total{protocol="imap",result="ok",route="legacy"} 1`,
		`mailcapture_sessions_active{protocol="imap",route="legacy"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if m := regexp.MustCompile(`mailcapture_limit_refusals_total\{limit="connections_per_address"\} (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] == "0" || m[1] == "1" {
		t.Errorf("refusals by connections_per_address: %v", m)
	}
	client.Logout().Wait()
	srv.stop(t)

	// Shadow mode recorded the login (written at the latest at shutdown),
	// nothing else: the forecast.
	code, out, errOut := runCLI(t, environ, "logins", "--config", path, "--json")
	var rows []loginRow
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 ||
		rows[0].Account != user || rows[0].State != "unknown" || rows[0].Protocols["imap"] != 1 {
		t.Fatalf("logins: exit %d %s %s", code, out, errOut)
	}
	if code, out, _ := runCLI(t, environ, "logins", "--config", path); code != 0 || !strings.Contains(out, user+"  unknown  1") {
		t.Fatalf("logins (text): exit %d\n%s", code, out)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

// TestThousandsOfConnectionsFromOneAddress opens 3,000 connections from
// one address, spread over the IMAP, POP3 and SMTP listeners, with the
// default limits: 50 are served, every other one is refused at once in its
// protocol's words, the refusals are counted, and once the flood ends a
// user from that address logs in as usual.
func TestThousandsOfConnectionsFromOneAddress(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "flood@example.org", "flood pass"
	d.AddUser(t, user, pass)
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__POP3=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0",
		"MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr, "MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none",
		"MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0", "MAILCAPTURE_MODE=shadow")
	srv := startServe(t, path, environ)
	addrs := map[string]string{}
	for _, key := range []string{"imap", "pop3", "smtp"} {
		addrs[key] = srv.waitFor(regexp.MustCompile(`msg=listening key=listen\.` + key + ` addr=(\S+)`))[1]
	}
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	served := map[string]string{"imap": "* OK", "pop3": "+OK", "smtp": "220 "}
	refused := map[string]string{"imap": "* BYE [UNAVAILABLE]", "pop3": "-ERR [SYS/TEMP]", "smtp": "421 "}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	nServed, nRefused := 0, 0
	for i := range 3000 {
		key := []string{"imap", "pop3", "smtp"}[i%3]
		c, err := net.Dial("tcp", addrs[key])
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case err != nil:
			t.Fatalf("connection %d (%s): no greeting: %v", i, key, err)
		case strings.HasPrefix(line, served[key]):
			nServed++
		case strings.HasPrefix(line, refused[key]):
			nRefused++
			c.Close()
		default:
			t.Fatalf("connection %d (%s) got %q", i, key, line)
		}
	}
	if nServed != 50 || nRefused != 2950 {
		t.Fatalf("%d connections served, %d refused; want 50 and 2950", nServed, nRefused)
	}
	metrics := scrape(t, "http://"+httpAddr+"/metrics")
	if !strings.Contains(metrics, `mailcapture_limit_refusals_total{limit="connections_per_address"} 2950`+"\n") {
		t.Errorf("refusals not counted:\n%s", regexp.MustCompile(`(?m)^mailcapture_limit_refusals_total.*$`).FindAllString(metrics, -1))
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	// The flood is over: the slots come back as the server sees the
	// closes (a bounded retry covers that moment).
	for i := 0; ; i++ {
		client, err := imapclient.DialInsecure(addrs["imap"], nil)
		if err == nil {
			err = client.Login(user, pass).Wait()
			client.Close()
		}
		if err == nil {
			break
		}
		if i == 100 {
			t.Fatalf("login after the flood: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv.stop(t)
}

// TestSMTPSlowAndOversizedClients: a client silent past
// smtp.command_timeout, one sending a command line over the length limit
// and one dribbling its DATA past smtp.data_timeout are each cut off in
// SMTP's words, and each refusal is counted by its limit.
func TestSMTPSlowAndOversizedClients(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none", "MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0",
		"MAILCAPTURE_SMTP__COMMAND_TIMEOUT=1s", "MAILCAPTURE_SMTP__DATA_TIMEOUT=1s")
	srv := startServe(t, path, environ)
	smtpAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	// session sends each line (after the greeting) and returns the last
	// line the server said before closing.
	session := func(lines ...string) string {
		t.Helper()
		c, err := net.Dial("tcp", smtpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			io.WriteString(c, l)
		}
		last := ""
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				last = line
			}
			if err != nil {
				return last
			}
		}
	}
	if got := session(); !strings.HasPrefix(got, "421 4.4.2") {
		t.Errorf("silent client got %q", got)
	}
	if got := session("EHLO " + strings.Repeat("x", 3000) + "\r\n"); !strings.HasPrefix(got, "500 5.4.0") {
		t.Errorf("oversized line got %q", got)
	}
	if got := session("EHLO slow.example\r\n", "MAIL FROM:<a@example.net>\r\n", "RCPT TO:<x@elsewhere.example>\r\n"); !strings.HasPrefix(got, "421 4.4.2") {
		t.Errorf("a client that stops after RCPT got %q", got)
	}
	metrics := scrape(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{
		`mailcapture_limit_refusals_total{limit="smtp_command_timeout"} 2`,
		`mailcapture_limit_refusals_total{limit="smtp_line_length"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, regexp.MustCompile(`(?m)^mailcapture_limit_refusals_total.*$`).FindAllString(metrics, -1))
		}
	}
	srv.stop(t)
}
