package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"mailcapture/vault"
)

// Validate checks every value and returns an *Error listing each bad key,
// or nil.
func (c *Config) Validate() error {
	var v validator
	v.dataDir("data_dir", c.DataDir)
	if len(c.Domains) == 0 {
		v.add("domains", "at least one mail domain is required")
	}
	for i, d := range c.Domains {
		if !validDomain(d) {
			v.add(fmt.Sprintf("domains[%d]", i), fmt.Sprintf("%q is not a domain name", d))
		}
	}
	v.oneOf("mode", c.Mode, "capture", "shadow")
	if d := c.Accounts.DefaultDomain; d != "" {
		hosted := false
		for _, h := range c.Domains {
			hosted = hosted || strings.EqualFold(h, d)
		}
		if !hosted {
			v.add("accounts.default_domain", fmt.Sprintf("%q is not one of domains", d))
		}
	}
	v.oneOf("legacy.login_name", c.Legacy.LoginName, "as_typed", "address", "local_part")
	if strings.ContainsFunc(c.SMTP.RecipientDelimiter, func(r rune) bool { return r == '@' || r <= ' ' || r == 0x7f || r == '"' }) {
		v.add("smtp.recipient_delimiter", fmt.Sprintf("%q: a delimiter cannot be @, a quote, white space or a control character", c.SMTP.RecipientDelimiter))
	}
	if f := c.Addresses.File; f != "" {
		if fh, err := os.Open(f); err != nil {
			v.add("addresses.file", err.Error())
		} else {
			fh.Close()
		}
	}

	if c.Legacy.IMAP.Address == "" && c.Legacy.POP3.Address == "" {
		v.add("legacy.imap.address", "the legacy server needs an IMAP or a POP3 address (legacy.imap.address or legacy.pop3.address)")
	}
	v.address("legacy.imap.address", c.Legacy.IMAP.Address, true)
	v.oneOf("legacy.imap.tls", c.Legacy.IMAP.TLS, "none", "starttls", "implicit")
	v.address("legacy.pop3.address", c.Legacy.POP3.Address, true)
	v.oneOf("legacy.pop3.tls", c.Legacy.POP3.TLS, "none", "starttls", "implicit")
	v.address("legacy.smtp.address", c.Legacy.SMTP.Address, true)
	v.oneOf("legacy.smtp.tls", c.Legacy.SMTP.TLS, "none", "starttls", "implicit")
	v.oneOf("legacy.smtp.protocol", c.Legacy.SMTP.Protocol, "smtp", "lmtp")
	if c.Listen.SMTP != "" && c.Legacy.SMTP.Address == "" && !c.Legacy.Retired {
		v.add("legacy.smtp.address", "required when listen.smtp is set: mail for accounts not yet captured is relayed there")
	}
	if submission := c.Listen.Submission != "" || c.Listen.Submissions != ""; submission {
		if c.Legacy.SMTP.Address == "" && !c.Legacy.Retired {
			v.add("legacy.smtp.address", "required when listen.submission is set: users' mail for colleagues not yet captured is relayed there")
		}
		if c.Legacy.Submission.Address == "" && c.Outbound.Relay.Address == "" && !c.Legacy.Retired {
			v.add("legacy.submission.address", "listen.submission needs a way out for mail to other domains: legacy.submission.address or outbound.relay.address")
		}
	}
	if m := c.Legacy.Master; m.User != "" {
		v.oneOf("legacy.master.style", m.Style, "separator", "sasl")
		if m.Style == "separator" && m.Separator == "" {
			v.add("legacy.master.separator", "must not be empty with style separator")
		}
		if m.PasswordFile == "" {
			v.add("legacy.master.password_file", "required with legacy.master.user")
		} else if _, err := m.Password(); err != nil {
			v.add("legacy.master.password_file", err.Error())
		}
	}
	if c.Legacy.Timeout <= 0 {
		v.add("legacy.timeout", "must be a positive duration")
	}

	v.address("listen.imap", c.Listen.IMAP, false)
	v.address("listen.imaps", c.Listen.IMAPS, false)
	v.address("listen.pop3", c.Listen.POP3, false)
	v.address("listen.pop3s", c.Listen.POP3S, false)
	v.address("listen.smtp", c.Listen.SMTP, false)
	v.address("listen.submission", c.Listen.Submission, false)
	v.address("listen.submissions", c.Listen.Submissions, false)
	v.address("legacy.submission.address", c.Legacy.Submission.Address, true)
	v.oneOf("legacy.submission.tls", c.Legacy.Submission.TLS, "none", "starttls", "implicit")
	v.address("legacy.managesieve.address", c.Legacy.ManageSieve.Address, true)
	v.oneOf("legacy.managesieve.tls", c.Legacy.ManageSieve.TLS, "none", "starttls", "implicit")
	v.address("outbound.relay.address", c.Outbound.Relay.Address, true)
	v.oneOf("outbound.relay.tls", c.Outbound.Relay.TLS, "none", "starttls", "implicit")
	if r := c.Outbound.Relay; r.Username != "" {
		if r.PasswordFile == "" {
			v.add("outbound.relay.password_file", "required with outbound.relay.username")
		} else if _, err := r.Password(); err != nil {
			v.add("outbound.relay.password_file", err.Error())
		}
	}
	v.atLeast("submission.max_messages_per_hour", c.Submission.MaxMessagesPerHour, 1)
	v.address("listen.managesieve", c.Listen.ManageSieve, false)
	v.atLeast("sieve.max_scripts", c.Sieve.MaxScripts, 1)
	v.atLeast("sieve.max_script_bytes", c.Sieve.MaxScriptBytes, 1)
	if c.Sieve.MaxScriptBytes > 1<<20 {
		v.add("sieve.max_script_bytes", "at most 1048576 (1 MiB)")
	}
	v.address("listen.http", c.Listen.HTTP, false)

	v.tlsFiles(c.TLS)
	for i, n := range c.TrustedNetworks {
		if _, _, err := net.ParseCIDR(n); err != nil {
			v.add(fmt.Sprintf("trusted_networks[%d]", i), fmt.Sprintf("%q is not a CIDR network (like 10.0.0.0/8)", n))
		}
	}
	if c.TLS.Cert == "" {
		if c.Listen.IMAPS != "" {
			v.add("listen.imaps", "implicit TLS needs a certificate: set tls.cert and tls.key")
		}
		if c.Listen.POP3S != "" {
			v.add("listen.pop3s", "implicit TLS needs a certificate: set tls.cert and tls.key")
		}
		if c.Listen.Submissions != "" {
			v.add("listen.submissions", "implicit TLS needs a certificate: set tls.cert and tls.key")
		}
	}

	if c.Capture.Workers < 1 {
		v.add("capture.workers", "must be at least 1")
	}
	if c.Capture.ConnectionsPerAccount < 1 {
		v.add("capture.connections_per_account", "must be at least 1")
	}
	if c.Capture.ConnectRate < 0 {
		v.add("capture.connect_rate", "must not be negative")
	}
	if c.PasswordHash.Time < 1 {
		v.add("password_hash.time", "must be at least 1")
	}
	if c.PasswordHash.MemoryKiB < 8*1024 {
		v.add("password_hash.memory_kib", "must be at least 8192 (8 MiB)")
	}
	if c.PasswordHash.Threads < 1 {
		v.add("password_hash.threads", "must be at least 1")
	}
	v.atLeast("limits.failed_logins_per_address", c.Limits.FailedLoginsPerAddress, 1)
	v.atLeast("limits.failed_logins_per_account", c.Limits.FailedLoginsPerAccount, 1)
	v.positive("limits.failed_login_window", c.Limits.FailedLoginWindow)
	v.atLeast("limits.connections_per_address", c.Limits.ConnectionsPerAddress, 1)
	v.atLeast("limits.connections", c.Limits.Connections, c.Limits.ConnectionsPerAddress)
	if c.Limits.IMAPIdleTimeout < 30*time.Minute {
		v.add("limits.imap_idle_timeout", "must be at least 30m (RFC 9051: clients may idle for 29 minutes)")
	}
	if c.Limits.POP3IdleTimeout < 10*time.Minute {
		v.add("limits.pop3_idle_timeout", "must be at least 10m (RFC 1939)")
	}
	if c.SMTP.MaxMessageBytes < 1024 {
		v.add("smtp.max_message_bytes", "must be at least 1024")
	}
	v.atLeast("smtp.max_recipients", c.SMTP.MaxRecipients, 1)
	v.atLeast("smtp.max_hops", c.SMTP.MaxHops, 1)
	v.positive("smtp.command_timeout", c.SMTP.CommandTimeout)
	v.positive("smtp.data_timeout", c.SMTP.DataTimeout)
	v.positive("smtp.message_lifetime", c.SMTP.MessageLifetime)
	v.positive("smtp.retry_min", c.SMTP.RetryMin)
	v.positive("smtp.retry_max", c.SMTP.RetryMax)
	if c.SMTP.RetryMax < c.SMTP.RetryMin {
		v.add("smtp.retry_max", "must not be shorter than smtp.retry_min")
	}
	v.positive("shutdown_timeout", c.ShutdownTimeout)
	if c.PasswordHash.Concurrency < 0 {
		v.add("password_hash.concurrency", "must be 0 (the number of CPUs) or more")
	}
	v.positive("capture.retry_min", c.Capture.RetryMin)
	v.positive("capture.retry_max", c.Capture.RetryMax)
	if c.Capture.RetryMax < c.Capture.RetryMin {
		v.add("capture.retry_max", "must not be shorter than capture.retry_min")
	}
	v.positive("vault.follow_interval", c.Vault.FollowInterval)
	if c.Vault.KeyFile != "" {
		if _, err := vault.Load(c.Vault.KeyFile); err != nil {
			v.add("vault.key_file", err.Error())
		}
	}
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
	return v.err()
}

type validator struct{ problems []Problem }

func (v *validator) add(key, msg string) {
	v.problems = append(v.problems, Problem{Key: key, Message: msg})
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &Error{Problems: v.problems}
}

func (v *validator) atLeast(key string, value, min int) {
	if value < min {
		v.add(key, fmt.Sprintf("must be at least %d", min))
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.add(key, "must be a positive duration")
	}
}

func (v *validator) oneOf(key, value string, allowed ...string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.add(key, fmt.Sprintf("%q is not one of %s", value, strings.Join(allowed, ", ")))
}

// address checks host:port; legacy addresses need a host, listeners may
// leave it empty (all interfaces) and use port 0 (any free port).
func (v *validator) address(key, value string, needHost bool) {
	if value == "" {
		return
	}
	host, port, err := net.SplitHostPort(value)
	if err != nil {
		v.add(key, fmt.Sprintf("%q is not host:port", value))
		return
	}
	if needHost && host == "" {
		v.add(key, fmt.Sprintf("%q has no host", value))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (needHost && n == 0) {
		v.add(key, fmt.Sprintf("%q has no valid port", value))
	}
}

func (v *validator) tlsFiles(t TLS) {
	switch {
	case t.Cert == "" && t.Key == "":
		return
	case t.Cert == "":
		v.add("tls.cert", "tls.key is set but tls.cert is not")
		return
	case t.Key == "":
		v.add("tls.key", "tls.cert is set but tls.key is not")
		return
	}
	ok := true
	for key, path := range map[string]string{"tls.cert": t.Cert, "tls.key": t.Key} {
		if _, err := os.Stat(path); err != nil {
			v.add(key, fmt.Sprintf("cannot read %s: %v", path, unwrapPathError(err)))
			ok = false
		}
	}
	if !ok {
		return
	}
	if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
		v.add("tls.cert", fmt.Sprintf("certificate and key do not load: %v", err))
	}
}

// dataDir checks that the directory exists and is writable, or that it can
// be created.
func (v *validator) dataDir(key, dir string) {
	if dir == "" {
		v.add(key, "must be set")
		return
	}
	st, err := os.Stat(dir)
	if os.IsNotExist(err) {
		parent := filepath.Dir(filepath.Clean(dir))
		if pst, perr := os.Stat(parent); perr != nil || !pst.IsDir() {
			v.add(key, fmt.Sprintf("%s does not exist and neither does its parent %s", dir, parent))
		} else if err := probeWritable(parent); err != nil {
			v.add(key, fmt.Sprintf("%s does not exist and cannot be created: %v", dir, err))
		}
		return
	}
	if err != nil {
		v.add(key, fmt.Sprintf("cannot read %s: %v", dir, unwrapPathError(err)))
		return
	}
	if !st.IsDir() {
		v.add(key, fmt.Sprintf("%s is not a directory", dir))
		return
	}
	if _, err := os.ReadDir(dir); err != nil {
		v.add(key, fmt.Sprintf("cannot read %s: %v", dir, unwrapPathError(err)))
		return
	}
	if err := probeWritable(dir); err != nil {
		v.add(key, fmt.Sprintf("%s is not writable: %v", dir, err))
	}
}

func probeWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-probe-*")
	if err != nil {
		return unwrapPathError(err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
