package legacytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SelfSignedTLS returns a server TLS config with a fresh certificate for
// 127.0.0.1 and mx.example.org, and a client config that trusts it.
func SelfSignedTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "mx.example.org"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"mx.example.org"}}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, ServerName: "mx.example.org", MinVersion: tls.VersionTLS12}
}

// Fetchmail prepares fetchmail in keep mode (UIDL kept between runs) for
// user at a POP3 server; each call of the returned function runs it once
// and returns its exit code (1 means "no new mail"). Messages land one a
// file in the returned directory.
func Fetchmail(t testing.TB, addr, user, password string) (run func() int, out string) {
	t.Helper()
	if _, err := exec.LookPath("fetchmail"); err != nil {
		t.Fatalf("fetchmail is not installed (make test installs it): %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	out = filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := filepath.Join(dir, "fetchmailrc")
	conf := fmt.Sprintf(`set no bouncemail
poll %s service %s protocol pop3 uidl auth password bad-header accept
  user %q there with password %q is root here
  options keep no sslcertck
  mda "/bin/sh -c 'cat > %s/msg.$$'"
`, host, port, user, password, out)
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return func() int {
		cmd := exec.Command("fetchmail", "-f", rc, "-i", filepath.Join(dir, "ids"), "--pidfile", filepath.Join(dir, "pid"), "--nodetach")
		cmd.Env = append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir)
		b, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ee.ExitCode() != 1 {
				t.Logf("fetchmail exit %d: %s", ee.ExitCode(), b)
			}
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("fetchmail: %v\n%s", err, b)
		}
		return 0
	}, out
}

// MbsyncConfig writes an mbsync configuration that pulls every folder of
// user at an IMAP server into a Maildir under dir (dir/mail), with fsync
// on, and returns its path.
func MbsyncConfig(t testing.TB, dir, addr, user, password string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	if err := os.MkdirAll(filepath.Join(dir, "mail"), 0o700); err != nil {
		t.Fatal(err)
	}
	pass := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(password)
	conf := fmt.Sprintf(`FSync yes

IMAPAccount legacy
Host %s
Port %s
User %s
Pass "%s"
SSLType None
AuthMechs LOGIN

IMAPStore legacy
Account legacy

MaildirStore local
Path %s/mail/
Inbox %s/mail/INBOX
SubFolders Verbatim

Channel pull
Far :legacy:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
`, host, port, user, pass, dir, dir)
	path := filepath.Join(dir, "mbsyncrc")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
