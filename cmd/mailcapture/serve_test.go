package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/pop3"
)

// TestServeProxiesAndCaptures runs serve with IMAP and POP3 listeners in
// front of a real Dovecot: a user's first IMAP login is served by the
// legacy server and starts the account's capture, which converges; POP3
// logins are proxied too.
func TestServeProxiesAndCaptures(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "serve@example.org", "serve pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(80, 15, 8000)}, {Name: "Sent", Messages: legacytest.Generate(81, 5, 8000)}})
	path, dataDir, environ := bulkConfig(t, d)
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__POP3=127.0.0.1:0",
		"MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none")

	srv := startServe(t, path, environ)
	srv.forbid(pass)
	waitFor := srv.waitFor
	imapAddr := waitFor(regexp.MustCompile(`msg=listening key=listen.imap addr=(\S+)`))[1]
	pop3Addr := waitFor(regexp.MustCompile(`msg=listening key=listen.pop3 addr=(\S+)`))[1]
	smtpAddr := waitFor(regexp.MustCompile(`msg=listening key=listen.smtp addr=(\S+)`))[1]

	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 15 {
		t.Fatalf("SELECT through serve: %+v %v", sel, err)
	}
	c.Logout().Wait()
	c.Close()
	waitFor(regexp.MustCompile(`msg="capture converged and verified" account=serve@example.org`))
	waitFor(regexp.MustCompile(`msg="cut-over done; the account is served from the store" account=serve@example.org`))

	code, out, errOut := runCLI(t, environ, "status", "--config", path, "--json")
	var report struct {
		Accounts map[string]int
		Stored   struct{ Messages int }
	}
	if code != 0 || json.Unmarshal([]byte(out), &report) != nil || report.Accounts["captured"] != 1 || report.Stored.Messages != 20 {
		t.Fatalf("status after the cut-over: exit %d %s %s", code, out, errOut)
	}

	// Both protocols are now served from the store.
	pc, err := pop3.Dial(context.Background(), pop3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	if n, _, err := pc.Stat(); err != nil || n != 15 {
		t.Fatalf("POP3 STAT through serve: %d %v", n, err)
	}
	pc.Quit()
	c2, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(regexp.MustCompile(`msg=login .*protocol=imap route=local result=ok account=serve@example.org client=127.0.0.1:`))
	if sel, err := c2.Select("Sent", nil).Wait(); err != nil || sel.NumMessages != 5 {
		t.Fatalf("SELECT Sent served locally: %+v %v", sel, err)
	}
	// New mail for the captured account is delivered into the store and
	// shows up at once in an IDLE session through the front end.
	exists := make(chan uint32, 8)
	idler, err := imapclient.DialInsecure(imapAddr, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(data *imapclient.UnilateralDataMailbox) {
			if data.NumMessages != nil {
				exists <- *data.NumMessages
			}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer idler.Close()
	if err := idler.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(smtpAddr)
	script := fmt.Sprintf(`
import smtplib
s = smtplib.SMTP(%q, %s, timeout=30)
s.sendmail("a@example.net", [%q], "Message-ID: <after-cutover@example.net>\r\nSubject: new\r\n\r\nhello\r\n")
s.quit()
`, host, port, user)
	if out, err := exec.Command("python3", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	select {
	case n := <-exists:
		if n != 16 {
			t.Fatalf("IDLE reported EXISTS %d, want 16", n)
		}
	case <-time.After(time.Second):
		t.Fatal("the IDLE session did not see the delivery within a second")
	}
	idle.Close()
	if sel, err := c2.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 16 {
		t.Fatalf("INBOX after SMTP delivery: %+v %v", sel, err)
	}
	// And in the next POP3 login.
	pc2, err := pop3.Dial(context.Background(), pop3Addr, pop3.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc2.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	if n, _, err := pc2.Stat(); err != nil || n != 16 {
		t.Fatalf("POP3 STAT after SMTP delivery: %d %v", n, err)
	}
	pc2.Quit()
	c2.Logout().Wait()
	c2.Close()

	srv.stop(t)
	// The password is nowhere in the store, the spool or the database
	// files (only its argon2id hash is).
	assertNotInFiles(t, dataDir, pass)
}

// assertNotInFiles fails if any file below dir contains secret.
func assertNotInFiles(t *testing.T, dir, secret string) {
	t.Helper()
	files := 0
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the password", path)
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Fatalf("read %s: %v (%d files)", dir, err, files)
	}
}

// TestServeTLSListeners: with a certificate, serve offers IMAP and POP3
// over implicit TLS, and logins there are proxied as on the plain ports.
func TestServeTLSListeners(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	const user, pass = "tls@example.org", "tls pass"
	d.AddUser(t, user, pass)
	d.Populate(t, user, pass, []legacytest.Folder{{Name: "INBOX", Messages: legacytest.Generate(90, 3, 2000)}})
	path, _, environ := bulkConfig(t, d)
	dir := t.TempDir()
	certPath, keyPath, clientTLS := writeCertificate(t, dir)
	environ = append(environ, "MAILCAPTURE_TLS__CERT="+certPath, "MAILCAPTURE_TLS__KEY="+keyPath,
		"MAILCAPTURE_LISTEN__IMAPS=127.0.0.1:0", "MAILCAPTURE_LISTEN__POP3S=127.0.0.1:0", "MAILCAPTURE_MODE=shadow")
	srv := startServe(t, path, environ)
	addrs := map[string]string{
		"listen.imaps": srv.waitFor(regexp.MustCompile(`msg=listening key=listen.imaps addr=(\S+)`))[1],
		"listen.pop3s": srv.waitFor(regexp.MustCompile(`msg=listening key=listen.pop3s addr=(\S+)`))[1],
	}
	c, err := imapclient.DialTLS(addrs["listen.imaps"], &imapclient.Options{TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("IMAPS login: %v", err)
	}
	if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 3 {
		t.Fatalf("IMAPS SELECT: %+v %v", sel, err)
	}
	c.Close()
	pc, err := pop3.Dial(context.Background(), addrs["listen.pop3s"], pop3.DialOptions{TLS: "implicit", TLSConfig: clientTLS, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Login(user, pass); err != nil {
		t.Fatalf("POP3S login: %v", err)
	}
	if n, _, err := pc.Stat(); err != nil || n != 3 {
		t.Fatalf("POP3S STAT: %d %v", n, err)
	}
	pc.Quit()
	srv.stop(t)
}

// writeCertificate writes a fresh certificate and key as PEM files and
// returns a client TLS config that trusts it.
func writeCertificate(t *testing.T, dir string) (certPath, keyPath string, client *tls.Config) {
	t.Helper()
	server, client := legacytest.SelfSignedTLS(t)
	cert := server.Certificates[0]
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certPath, keyPath, client
}

// serveProcess is a running `mailcapture serve` whose log lines tests
// wait for.
type serveProcess struct {
	t      *testing.T
	events chan string
	cancel context.CancelFunc
	done   chan int

	mu      sync.Mutex
	lines   []string // every log line, for forbid
	secrets []string
	scanned chan struct{} // closed once every log line is read
	// reload asks serve to reload its configuration, as SIGHUP does.
	reload chan struct{}
}

// forbid makes stop fail if any log line contains one of the secrets.
func (p *serveProcess) forbid(secrets ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.secrets = append(p.secrets, secrets...)
}

// startServe runs serve with the configuration file and environment; it
// is stopped at the end of the test if stop was not called.
func startServe(t *testing.T, path string, environ []string) *serveProcess {
	t.Helper()
	pr, pw := io.Pipe()
	reload := make(chan struct{}, 1)
	env := &environment{stdout: io.Discard, stderr: pw, environ: environ, reload: reload}
	ctx, cancel := context.WithCancel(context.Background())
	p := &serveProcess{t: t, events: make(chan string, 256), cancel: cancel, done: make(chan int, 1), scanned: make(chan struct{}), reload: reload}
	go func() {
		p.done <- run(ctx, env, []string{"serve", "--config", path})
		pw.Close()
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			p.events <- sc.Text()
		}
		close(p.events)
		close(p.scanned)
		io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() {
		cancel()
		for range p.events {
		}
		if t.Failed() { // what serve said last, to see why
			p.mu.Lock()
			t.Logf("serve's last log lines:\n%s", strings.Join(p.lines[max(0, len(p.lines)-30):], "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

// waitFor returns the submatches of the first log line matching re, from
// the lines not read yet.
func (p *serveProcess) waitFor(re *regexp.Regexp) []string {
	p.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-p.events:
			if !ok {
				p.t.Fatalf("serve ended before logging %s", re)
			}
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-timeout:
			p.t.Fatalf("serve did not log %s within 60s", re)
		}
	}
}

// stop ends serve as SIGTERM would and checks it exited cleanly.
func (p *serveProcess) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	go func() {
		for range p.events {
		}
	}()
	if code := <-p.done; code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	<-p.scanned
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range p.lines {
		for _, s := range p.secrets {
			if strings.Contains(line, s) {
				t.Errorf("a password is in the log: %s", line)
			}
		}
	}
}
