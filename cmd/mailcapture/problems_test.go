package main

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/status"
)

// TestProblemsAreWhatAnAdminCanActOn: a wrong password and a proxied
// session ended by the user's LOGOUT are not problems: the status page
// lists none. The failure that reaches the per-account limit is one
// problem, one plain sentence, and the logins refused after it add none.
func TestProblemsAreWhatAnAdminCanActOn(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "problems@example.org", "problems pass"
	d.AddUser(t, user, pass)
	path, _, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__HTTP=127.0.0.1:0",
		"MAILCAPTURE_LIMITS__FAILED_LOGINS_PER_ACCOUNT=3", "MAILCAPTURE_MODE=shadow")
	srv := startServe(t, path, environ)
	imapAddr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	httpAddr := srv.waitFor(regexp.MustCompile(`msg="http listening" addr=(\S+)`))[1]
	problems := func() []status.Problem {
		t.Helper()
		resp, err := http.Get("http://" + httpAddr + "/status.json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r status.Report
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return r.Problems
	}
	login := func(password string) error {
		t.Helper()
		c, err := imapclient.DialInsecure(imapAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(user, password).Wait(); err != nil {
			return err
		}
		return c.Logout().Wait()
	}
	if err := login(pass); err != nil {
		t.Fatalf("proxied login and LOGOUT: %v", err)
	}
	srv.waitFor(regexp.MustCompile(`msg="proxied imap session ended"`))
	if err := login("wrong"); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("wrong password: %v", err)
	}
	srv.waitFor(regexp.MustCompile(`msg=login .*result=failed`))
	if p := problems(); len(p) != 0 {
		t.Fatalf("problems after a LOGOUT and a wrong password: %+v", p)
	}
	for range 2 {
		login("wrong")
	}
	srv.waitFor(regexp.MustCompile(`level=WARN msg="too many failed logins for problems@example.org: further logins are refused for up to 10m0s"`))
	if err := login(pass); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("login past the limit: %v", err)
	}
	srv.waitFor(regexp.MustCompile(`msg="login refused: too many failed logins.*result=limited`))
	p := problems()
	if len(p) != 1 || p[0].Level != "warn" || p[0].Message != "too many failed logins for problems@example.org: further logins are refused for up to 10m0s" {
		t.Fatalf("problems after the limit was reached: %+v", p)
	}
	srv.stop(t)
}
