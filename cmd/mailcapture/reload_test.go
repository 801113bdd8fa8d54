package main

import (
	"bytes"
	"crypto/tls"
	"os"
	"regexp"
	"strings"
	"testing"

	"mailcapture/legacytest"
)

// TestReloadOnSIGHUP: a reload (what SIGHUP triggers) takes a new TLS
// certificate for new connections, applies log.level, and names the keys
// that need a restart; a broken configuration is refused and the running
// one kept.
func TestReloadOnSIGHUP(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	path, _, environ := bulkConfig(t, d)
	dir := t.TempDir()
	certPath, keyPath, _ := writeCertificate(t, dir)
	environ = append(environ, "MAILCAPTURE_TLS__CERT="+certPath, "MAILCAPTURE_TLS__KEY="+keyPath, "MAILCAPTURE_LISTEN__IMAPS=127.0.0.1:0")
	srv := startServe(t, path, environ)
	addr := srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imaps addr=(\S+)`))[1]
	served := func() []byte {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}
	first := served()
	// TLS 1.2 at least, and only forward-secret AEAD suites.
	for name, cfg := range map[string]*tls.Config{
		"TLS 1.1":      {InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11},
		"a CBC suite":  {InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}},
		"RSA key exch": {InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
	} {
		if c, err := tls.Dial("tcp", addr, cfg); err == nil {
			c.Close()
			t.Errorf("a handshake with %s succeeded", name)
		}
	}
	if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err != nil {
		t.Errorf("TLS 1.2 with default suites refused: %v", err)
	} else {
		c.Close()
	}

	// A new certificate, a new log level, a listener moved.
	writeCertificate(t, dir)
	raw, _ := os.ReadFile(path)
	conf := strings.Replace(string(raw), "listen:\n", "log: {level: debug}\nlisten:\n  pop3: \"127.0.0.1:0\"\n", 1)
	os.WriteFile(path, []byte(conf), 0o600)
	srv.reload <- struct{}{}
	m := srv.waitFor(regexp.MustCompile(`msg="configuration reloaded" applied=(\S+) needs_restart=(\S*)`))
	if !strings.Contains(m[1], "tls.cert") || !strings.Contains(m[1], "log.level") || m[2] != "listen.pop3" {
		t.Fatalf("reload applied %q, needs restart %q", m[1], m[2])
	}
	second := served()
	if bytes.Equal(first, second) {
		t.Fatal("new connections still get the old certificate")
	}
	// A broken file is refused; the running configuration stays.
	os.WriteFile(path, []byte("listen: [not, a, section]\n"), 0o600)
	srv.reload <- struct{}{}
	srv.waitFor(regexp.MustCompile(`msg="reload: configuration refused; keeping the running one"`))
	if !bytes.Equal(served(), second) {
		t.Fatal("the certificate changed after a refused reload")
	}
	srv.stop(t)
}
