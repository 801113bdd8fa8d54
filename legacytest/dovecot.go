// Package legacytest starts private Dovecot instances to play the legacy
// server in tests: unprivileged loopback ports, every path in a temporary
// directory, stopped when the test ends. If Dovecot cannot be started the
// test fails; it is never skipped.
package legacytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options shape the legacy server.
type Options struct {
	// Separator is the hierarchy separator; default "/".
	Separator string
	// Prefix is the personal namespace prefix, e.g. "INBOX." as Courier
	// and Cyrus have it; default none.
	Prefix string
	// NoSpecialUse leaves special-use attributes unconfigured, as on
	// servers that do not announce them.
	NoSpecialUse bool
	// Fsync keeps Dovecot's fsyncs (off by default to keep tests fast).
	Fsync bool
	// UIDLFormat is Dovecot's pop3_uidl_format; default %08Xu%08Xv.
	UIDLFormat string
	// MasterUser and MasterPassword add a master user that may log in as
	// anyone ("account*master", or SASL PLAIN with an authorization id).
	MasterUser, MasterPassword string
	// TLS turns on STARTTLS/STLS and implicit-TLS listeners with a fresh
	// self-signed certificate for 127.0.0.1 (see Dovecot.CertPool).
	TLS bool
	// ManySessions configures Dovecot for tens of thousands of concurrent
	// IMAP sessions of one user from one address (long-lived login
	// processes, many clients per imap process). The caller's file
	// descriptor limit must allow it.
	ManySessions bool
	// Dir is where Dovecot's directory is made (benchmarks put it on the
	// same filesystem as the store they compare); default the system's
	// temporary directory.
	Dir string
	// DefaultRealm is Dovecot's auth_default_realm: a login without a
	// domain is taken as user@DefaultRealm (add users with their full
	// address). Default none: users log in exactly as added.
	DefaultRealm string
	// RecipientDelimiter is Dovecot's recipient_delimiter (LMTP takes
	// bob+lists@ for bob@). Default none.
	RecipientDelimiter string
	// Sieve turns on Pigeonhole (Debian's dovecot-sieve and
	// dovecot-managesieved): LMTP deliveries run each user's active
	// Sieve script, and a ManageSieve listener (ManageSieveAddr) keeps
	// the scripts; replies and redirects go to SubmissionHost.
	Sieve bool
	// SubmissionHost ("127.0.0.1:port") is where Sieve's vacation
	// replies and redirects are sent (Dovecot's submission_host).
	SubmissionHost string
}

// MaildirDelivery is where an MTA delivering straight into the users'
// Maildirs (Postfix's virtual(8)) puts mail: user's Maildir is
// base/<user>/Maildir/, owned by uid and gid.
func (d *Dovecot) MaildirDelivery() (base string, uid, gid int) {
	return filepath.Join(d.Dir, "home"), d.mailUID, d.mailGID
}

// Dovecot is a running private Dovecot.
type Dovecot struct {
	Dir      string
	IMAPAddr string
	POP3Addr string
	LMTPAddr string
	// AuthAddr is Dovecot's authentication service (its auth protocol,
	// as an MTA's SASL uses it: Postfix's smtpd_sasl_type = dovecot).
	AuthAddr string
	// ManageSieveAddr is the ManageSieve listener (Options.Sieve).
	ManageSieveAddr string
	// IMAPSAddr and POP3SAddr are the implicit-TLS listeners (TLS only).
	IMAPSAddr string
	POP3SAddr string
	// CertPool trusts the server's certificate (TLS only).
	CertPool *x509.CertPool
	Options  Options

	cmd     *exec.Cmd
	ports   []int
	mu      sync.Mutex
	users   map[string]string
	mailUID int
	mailGID int
}

// Start starts a Dovecot and registers its stop with t.Cleanup.
func Start(t testing.TB, opts Options) *Dovecot {
	t.Helper()
	if opts.Separator == "" {
		opts.Separator = "/"
	}
	if _, err := exec.LookPath("dovecot"); err != nil {
		t.Fatalf("legacytest: dovecot is not installed (make test installs it: scripts/test-deps.sh): %v", err)
	}
	dir, err := os.MkdirTemp(opts.Dir, "legacy-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Dovecot's unprivileged processes must reach the directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Dovecot{Dir: dir, Options: opts, users: map[string]string{}}
	mail, err := user.Lookup("mail")
	if err != nil {
		t.Fatalf("legacytest: no 'mail' user to own the mailboxes: %v", err)
	}
	d.mailUID, _ = strconv.Atoi(mail.Uid)
	d.mailGID, _ = strconv.Atoi(mail.Gid)
	for _, sub := range []string{"run", "state", "home", "users"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "home"), d.mailUID, d.mailGID); err != nil {
		t.Fatal(err)
	}

	if opts.TLS {
		if err := d.makeCertificate(); err != nil {
			t.Fatal(err)
		}
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(7)
		if err != nil {
			t.Fatal(err)
		}
		d.IMAPAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		d.POP3Addr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		d.LMTPAddr = fmt.Sprintf("127.0.0.1:%d", ports[2])
		d.AuthAddr = fmt.Sprintf("127.0.0.1:%d", ports[5])
		if opts.Sieve {
			d.ManageSieveAddr = fmt.Sprintf("127.0.0.1:%d", ports[6])
		}
		if opts.TLS {
			d.IMAPSAddr = fmt.Sprintf("127.0.0.1:%d", ports[3])
			d.POP3SAddr = fmt.Sprintf("127.0.0.1:%d", ports[4])
		}
		if lastErr = d.start(ports); lastErr == nil {
			d.ports = ports
			t.Cleanup(d.Stop)
			return d
		}
	}
	log, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
	t.Fatalf("legacytest: dovecot did not start: %v\n%s", lastErr, log)
	return nil
}

func (d *Dovecot) configPath() string { return filepath.Join(d.Dir, "dovecot.conf") }

func (d *Dovecot) start(ports []int) error {
	specialUse := `
  mailbox Drafts {
    special_use = \Drafts
  }
  mailbox Sent {
    special_use = \Sent
  }
  mailbox Trash {
    special_use = \Trash
  }
  mailbox Junk {
    special_use = \Junk
  }
  mailbox Archive {
    special_use = \Archive
  }`
	if d.Options.NoSpecialUse {
		specialUse = ""
	}
	many := ""
	if d.Options.ManySessions {
		many = `default_client_limit = 15000
mail_max_userip_connections = 15000
service imap-login {
  service_count = 0
  client_limit = 15000
  process_min_avail = 1
  vsz_limit = 2G
}
service imap {
  service_count = 0
  client_limit = 100
  # a hundred sessions on 20,000-message mailboxes outgrow the 256M default
  vsz_limit = 2G
}
`
	}
	master := ""
	if d.Options.MasterUser != "" {
		line := fmt.Sprintf("%s:{PLAIN}%s::::::\n", d.Options.MasterUser, d.Options.MasterPassword)
		if err := os.WriteFile(filepath.Join(d.Dir, "master-users"), []byte(line), 0o644); err != nil {
			return err
		}
		master = fmt.Sprintf(`auth_master_user_separator = *
passdb {
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=PLAIN %s/master-users
}`, d.Dir)
	}
	ssl, imapsPort, pop3sPort := "ssl = no", 0, 0
	if d.Options.TLS {
		ssl = fmt.Sprintf("ssl = yes\nssl_cert = <%s/cert.pem\nssl_key = <%s/key.pem\nssl_min_protocol = TLSv1.2", d.Dir, d.Dir)
		imapsPort, pop3sPort = ports[3], ports[4]
	}
	uidlFormat := d.Options.UIDLFormat
	if uidlFormat == "" {
		uidlFormat = "%08Xu%08Xv"
	}
	realm := ""
	if d.Options.DefaultRealm != "" {
		realm = "auth_default_realm = " + d.Options.DefaultRealm
	}
	protocols, sieve := "imap pop3 lmtp", ""
	if d.Options.Sieve {
		protocols += " sieve"
		sieve = fmt.Sprintf(`postmaster_address = postmaster@example.org
submission_host = %s
protocol lmtp {
  mail_plugins = $mail_plugins sieve
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
}
service managesieve-login {
  inet_listener sieve {
    address = 127.0.0.1
    port = %d
  }
}
`, d.Options.SubmissionHost, ports[6])
	}
	fsync := "never"
	if d.Options.Fsync {
		fsync = "optimized"
	}
	conf := fmt.Sprintf(`# private legacy server for mailcapture tests
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
info_log_path = %[1]s/dovecot.log
protocols = %[20]s
listen = 127.0.0.1
%[13]s
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_fsync = %[2]s
mail_location = maildir:~/Maildir
pop3_uidl_format = %[11]s
lmtp_save_to_detail_mailbox = no
recipient_delimiter = %[17]s
%[18]s
login_greeting = Legacy Dovecot ready.
auth_failure_delay = 0
mail_max_userip_connections = 200
%[12]s
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[1]s/users/%%u
}
userdb {
  driver = passwd-file
  args = username_format=%%u %[1]s/users/%%u
  default_fields = uid=%[3]d gid=%[4]d home=%[1]s/home/%%u
}
namespace inbox {
  inbox = yes
  separator = %[5]s
  prefix = %[6]s
%[7]s
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[8]d
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = %[14]d
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = %[9]d
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = %[15]d
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[10]d
  }
}
service imap {
  process_limit = 512
}
service auth {
  inet_listener auth-inet {
    address = 127.0.0.1
    port = %[19]d
  }
}
%[16]s
%[21]s`, d.Dir, fsync, d.mailUID, d.mailGID, d.Options.Separator, d.Options.Prefix, specialUse, ports[0], ports[1], ports[2], uidlFormat, master, ssl, imapsPort, pop3sPort, many, d.Options.RecipientDelimiter, realm, ports[5], protocols, sieve)
	if err := os.WriteFile(d.configPath(), []byte(conf), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("dovecot", "-F", "-c", d.configPath())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	// Implicit-TLS ports do not greet in clear.
	addrs := []string{d.IMAPAddr, d.POP3Addr, d.LMTPAddr}
	if d.ManageSieveAddr != "" {
		addrs = append(addrs, d.ManageSieveAddr)
	}
	if err := awaitGreetings(cmd, "dovecot", addrs...); err != nil {
		return err
	}
	d.cmd = cmd
	return nil
}

// awaitGreetings waits, 15 s at most, until every address greets; the
// started cmd is killed (its process group) if it exits or does not
// listen in time. Once it listens, it is reaped in the background (Stop
// waits for it through the process group).
func awaitGreetings(cmd *exec.Cmd, name string, addrs ...string) error {
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for _, addr := range addrs {
		for greets(addr) != nil {
			select {
			case err := <-exited:
				return fmt.Errorf("%s exited: %v", name, err)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
				return fmt.Errorf("%s did not listen within 15s", name)
			}
		}
	}
	go func() { <-exited }()
	return nil
}

func greets(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n == 0 {
		return fmt.Errorf("no greeting: %v", err)
	}
	return nil
}

// Stop stops Dovecot and all its processes.
func (d *Dovecot) Stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	stopGroup(d.cmd.Process.Pid)
	d.cmd = nil
}

// stopGroup ends the process group pid leads: SIGTERM, then SIGKILL if
// it is still there after 2 s.
func stopGroup(pid int) {
	syscall.Kill(-pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if syscall.Kill(-pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
}

// Restart stops Dovecot, runs whileDown (nil: nothing) and starts it
// again on the same ports, as a legacy server restarted by its admin.
func (d *Dovecot) Restart(t testing.TB, whileDown func()) {
	t.Helper()
	d.Stop()
	if whileDown != nil {
		whileDown()
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the old processes may hold the ports a moment longer
		if err = d.start(d.ports); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(d.Dir, "dovecot.log"))
	t.Fatalf("legacytest: dovecot did not start again: %v\n%s", err, log)
}

// ForgetUIDs removes the index and UID list of user's folder, so that
// when Dovecot starts next (call it while stopped, from Restart) the
// folder has a new UIDVALIDITY and its messages are numbered from 1
// again, as after a legacy server lost or rebuilt its index files.
func (d *Dovecot) ForgetUIDs(t testing.TB, user, folder string) {
	t.Helper()
	maildir := filepath.Join(d.Dir, "home", user, "Maildir")
	dir := maildir
	if folder != "INBOX" {
		dir = filepath.Join(maildir, "."+strings.ReplaceAll(folder, d.Options.Separator, "."))
	}
	nextSecond() // a new UIDVALIDITY is the time of day in seconds
	for _, pattern := range []string{filepath.Join(dir, "dovecot-uidlist"), filepath.Join(dir, "dovecot.index*"), filepath.Join(maildir, "dovecot.list.index*")} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cur")); err != nil {
		t.Fatalf("legacytest: no maildir folder %s: %v", dir, err)
	}
}

// AddUser creates a mail user. Each user has a passwd file of their own,
// which Dovecot reads at the user's first login.
func (d *Dovecot) AddUser(t testing.TB, name, password string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if strings.ContainsAny(name+password, ":\n/") || strings.HasPrefix(name, ".") {
		t.Fatalf("legacytest: user %q or its password has a ':', '/' or newline", name)
	}
	if _, ok := d.users[name]; ok {
		t.Fatalf("legacytest: user %q exists (Dovecot may not see a changed password within a second)", name)
	}
	d.users[name] = password
	line := fmt.Sprintf("%s:{PLAIN}%s::::::\n", name, password)
	if err := os.WriteFile(filepath.Join(d.Dir, "users", name), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

// BreakPassdb makes the user's passwd file unreadable for Dovecot's auth
// service (a symbolic link to itself: opening it fails, and not because
// it is missing): it answers logins with NO [UNAVAILABLE] until
// RepairPassdb.
func (d *Dovecot) BreakPassdb(t testing.TB, name string) {
	t.Helper()
	path := filepath.Join(d.Dir, "users", name)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path, path); err != nil {
		t.Fatal(err)
	}
	nextSecond() // Dovecot looks at the file at most once a second
}

// RepairPassdb undoes BreakPassdb.
func (d *Dovecot) RepairPassdb(t testing.TB, name string) {
	t.Helper()
	path := filepath.Join(d.Dir, "users", name)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	password := d.users[name]
	d.mu.Unlock()
	line := fmt.Sprintf("%s:{PLAIN}%s::::::\n", name, password)
	if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	nextSecond()
}

// ChangePassword replaces a user's password. Dovecot's passwd-file
// driver looks at a file's modification time at most once per second of
// wall clock, so the file's time is moved on explicitly and ChangePassword
// returns once the wall clock has entered the next second: from then on
// every login sees the new password.
func (d *Dovecot) ChangePassword(t testing.TB, name, password string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.users[name]; !ok || strings.ContainsAny(password, ":\n") {
		t.Fatalf("legacytest: no user %q, or a ':' or newline in the password", name)
	}
	path := filepath.Join(d.Dir, "users", name)
	old, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	d.users[name] = password
	line := fmt.Sprintf("%s:{PLAIN}%s::::::\n", name, password)
	if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	later := old.ModTime().Add(2 * time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	nextSecond()
}

// nextSecond returns once the wall clock has entered the next second:
// Dovecot's passwd-file driver looks at a file at most once per second.
func nextSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second).Sub(now))
}

// RemoveUser deletes a user's passwd file. It returns once the wall clock
// has entered the next second (see ChangePassword): from then on the user
// is unknown (logins fail, LMTP refuses the address).
func (d *Dovecot) RemoveUser(t testing.TB, name string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Remove(filepath.Join(d.Dir, "users", name)); err != nil {
		t.Fatal(err)
	}
	delete(d.users, name)
	nextSecond()
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// makeCertificate writes a self-signed certificate for 127.0.0.1 and
// trusts it in CertPool.
func (d *Dovecot) makeCertificate() error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "legacy.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"legacy.test"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &priv.PublicKey, priv)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	d.CertPool = x509.NewCertPool()
	d.CertPool.AddCert(cert)
	return nil
}

// PutSieve stores a Sieve script for a user (Options.Sieve) as
// ManageSieve would: ~/sieve/NAME.sieve, and, when active, the
// ~/.dovecot.sieve link to it.
func (d *Dovecot) PutSieve(t testing.TB, user, name string, script []byte, active bool) {
	t.Helper()
	home := filepath.Join(d.Dir, "home", user)
	dir := filepath.Join(home, "sieve")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".sieve")
	if err := os.WriteFile(path, script, 0o600); err != nil {
		t.Fatal(err)
	}
	if active {
		link := filepath.Join(home, ".dovecot.sieve")
		os.Remove(link)
		if err := os.Symlink(filepath.Join("sieve", name+".sieve"), link); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{home, dir, path, filepath.Join(home, ".dovecot.sieve")} {
		os.Lchown(p, d.mailUID, d.mailGID)
	}
}

// Logins counts the successful logins Dovecot has logged so far for a
// protocol ("imap", "pop3", "managesieve").
func (d *Dovecot) Logins(t testing.TB, protocol string) int {
	t.Helper()
	log, err := os.ReadFile(filepath.Join(d.Dir, "dovecot.log"))
	if err != nil {
		t.Fatalf("read the Dovecot log: %v", err)
	}
	return bytes.Count(log, []byte(protocol+"-login: Info: Login: "))
}
