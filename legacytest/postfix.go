package legacytest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostfixOptions configures a private Postfix.
type PostfixOptions struct {
	// LMTPAddr is where Postfix delivers mail for Domain (a Dovecot's
	// LMTP listener).
	LMTPAddr string
	// Domain is the mail domain Postfix accepts mail for.
	Domain string
	// Users are the addresses that exist; others are refused at RCPT
	// time with 550 5.1.1.
	Users []string
	// Dir, if set, holds Postfix's queue and configuration (for example on
	// a scratch filesystem); default a test temporary directory.
	Dir string
	// Aliases, if set, is a virtual_alias_maps table (Postfix virtual(5)
	// syntax) applied before delivery.
	Aliases string
	// Maildirs, if set, makes Postfix deliver with its own virtual(8)
	// agent straight into the users' Maildirs (Dovecot.MaildirDelivery)
	// instead of over LMTP: it adds Delivered-To and X-Original-To, as
	// such installations have them.
	Maildirs *Dovecot
	// RecipientDelimiter is Postfix's recipient_delimiter (bob+lists@ is
	// bob's). Default none.
	RecipientDelimiter string
	// Submission, if set, adds a submission listener: STARTTLS required,
	// SASL through Dovecot's auth service (smtpd_sasl_type = dovecot),
	// relaying for authenticated users only; mail for other domains
	// goes to its RelayHost.
	Submission *PostfixSubmission
}

// PostfixSubmission is the submission service of a private Postfix.
type PostfixSubmission struct {
	// Auth checks the passwords (its AuthAddr) and lends its certificate
	// (it must have been started with Options.TLS).
	Auth *Dovecot
	// RelayHost ("127.0.0.1:port") stands in for the outside world: all
	// mail for domains other than Domain is relayed there.
	RelayHost string
}

// Postfix is a running private Postfix: the legacy domain's MTA in front
// of its Dovecot, as many legacy installations have it.
type Postfix struct {
	Dir  string
	Addr string // SMTP listener, 127.0.0.1:port
	// SubmissionAddr is the submission listener (with
	// PostfixOptions.Submission).
	SubmissionAddr string
}

// StartPostfix starts a Postfix (Debian package postfix) listening on a
// free loopback port with its queue and configuration in a directory of
// its own; it is stopped when the test ends. It fails the test if Postfix
// cannot run here.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	if _, err := exec.LookPath("postfix"); err != nil {
		t.Fatalf("legacytest: postfix is not installed (make test-deps installs it): %v", err)
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("legacytest: no postfix user: %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	dir := opts.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	// Postfix's daemons drop to the postfix user: every directory above
	// its own must let them through.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, sub := range []string{"spool", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}
	// A port found free may be taken by another test before Postfix binds
	// it: then Postfix is started again on other ports.
	var p *Postfix
	for attempt := 0; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		p = &Postfix{Dir: dir, Addr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		if opts.Submission != nil {
			p.SubmissionAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		}
		main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/spool
data_directory = %[1]s/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = legacy-mta.%[2]s
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = %[2]s
virtual_mailbox_maps = texthash:%[1]s/vmailbox
virtual_transport = %[3]s
virtual_alias_maps = texthash:%[1]s/virtual
recipient_delimiter = %[4]s
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file_prefixes = %[1]s
maillog_file = %[1]s/maillog
`, dir, opts.Domain, "lmtp:inet:"+opts.LMTPAddr, opts.RecipientDelimiter)
		var users strings.Builder
		for _, u := range opts.Users {
			fmt.Fprintf(&users, "%s ok\n", u)
		}
		if d := opts.Maildirs; d != nil {
			base, uid, gid := d.MaildirDelivery()
			main = strings.Replace(main, "virtual_transport = lmtp:inet:"+opts.LMTPAddr, "virtual_transport = virtual", 1)
			main += fmt.Sprintf("virtual_mailbox_base = %s\nvirtual_uid_maps = static:%d\nvirtual_gid_maps = static:%d\nvirtual_minimum_uid = 1\n", base, uid, gid)
			users.Reset()
			for _, u := range opts.Users {
				fmt.Fprintf(&users, "%s %s/Maildir/\n", u, u)
			}
		}
		master, err := os.ReadFile("/etc/postfix/master.cf")
		if err != nil {
			t.Fatalf("legacytest: %v", err)
		}
		// The SMTP listener on our port; no chroot (the queue is not set up
		// for one).
		conf := regexp.MustCompile(`(?m)^smtp(\s+)inet`).ReplaceAllString(string(master), p.Addr+"${1}inet")
		conf = regexp.MustCompile(`(?m)^(\S+\s+\S+\s+\S+\s+\S+\s+)y(\s)`).ReplaceAllString(conf, "${1}n${2}")
		if sub := opts.Submission; sub != nil {
			if sub.Auth == nil || sub.Auth.CertPool == nil {
				t.Fatal("legacytest: Postfix submission needs a Dovecot started with TLS")
			}
			main += fmt.Sprintf("relayhost = [%s]:%s\nsmtp_tls_security_level = none\n", strings.Split(sub.RelayHost, ":")[0], strings.Split(sub.RelayHost, ":")[1])
			conf += fmt.Sprintf(`%s inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_cert_file=%[2]s/cert.pem
  -o smtpd_tls_key_file=%[2]s/key.pem
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=inet:%[3]s
  -o smtpd_tls_auth_only=yes
  -o mynetworks=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
`, p.SubmissionAddr, sub.Auth.Dir, sub.Auth.AuthAddr)
		}
		for name, body := range map[string]string{"main.cf": main, "master.cf": conf, "vmailbox": users.String(), "virtual": opts.Aliases} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command("postfix", "-c", dir, "start").CombinedOutput()
		if err == nil {
			break
		}
		if attempt < 4 && strings.Contains(p.log(), "Address already in use") {
			p.stop()
			os.Remove(filepath.Join(dir, "maillog"))
			continue
		}
		t.Fatalf("legacytest: postfix start: %v\n%s\n%s", err, out, p.log())
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(15 * time.Second)
	for _, addr := range []string{p.Addr, p.SubmissionAddr} {
		for addr != "" && greets(addr) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("legacytest: postfix did not listen on %s within 15s\n%s", addr, p.log())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p
}

// log returns the end of Postfix's log.
func (p *Postfix) log() string {
	raw, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// Queued returns how many messages wait in Postfix's queue.
func (p *Postfix) Queued() int {
	n := 0
	for _, q := range []string{"incoming", "active", "deferred", "maildrop", "hold"} {
		filepath.Walk(filepath.Join(p.Dir, "spool", q), func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// stop stops Postfix and waits (bounded) for its master to exit.
// Stop stops Postfix now (it is stopped at the test's end anyway).
func (p *Postfix) Stop() { p.stop() }

func (p *Postfix) stop() {
	raw, _ := os.ReadFile(filepath.Join(p.Dir, "spool", "pid", "master.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	exec.Command("postfix", "-c", p.Dir, "stop").Run()
	for i := 0; pid > 0 && i < 500 && running(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if pid > 0 && running(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// running tells whether a process exists and is not a zombie.
func running(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(raw), ") ")
	return !strings.HasPrefix(rest, "Z")
}
