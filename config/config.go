// Package config defines mailcapture's configuration: one struct, loaded by
// koanf from a YAML file, overridden by MAILCAPTURE_* environment variables
// and then by command-line flags, and validated so that every bad value is
// reported with the key that holds it.
package config

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Config is the whole configuration of a mailcapture instance.
type Config struct {
	// DataDir holds the store (database, message files, relay spool).
	// Default "./data".
	DataDir string `koanf:"data_dir"`
	// Hostname is the name mailcapture uses in greetings and Received
	// headers. Default: the machine's host name.
	Hostname string `koanf:"hostname"`
	// Domains lists the mail domains served. Required, at least one.
	Domains []string `koanf:"domains"`
	// Mode is "capture" (default) or "shadow" (proxy and record logins,
	// capture nothing).
	Mode string `koanf:"mode"`
	// Accounts names the accounts.
	Accounts Accounts `koanf:"accounts"`
	// Addresses is the alias table: addresses that reach accounts under
	// other names.
	Addresses Addresses `koanf:"addresses"`
	// Legacy describes the server being migrated away from.
	Legacy Legacy `koanf:"legacy"`
	// Listen holds the listener addresses; an empty address disables
	// that listener.
	Listen Listen `koanf:"listen"`
	// TLS holds the certificate served by the TLS listeners and STARTTLS.
	TLS TLS `koanf:"tls"`
	// TrustedNetworks lists the CIDR networks whose clients may log in
	// without TLS. Default loopback only.
	TrustedNetworks []string `koanf:"trusted_networks"`
	// Capture tunes the capture engine.
	Capture Capture `koanf:"capture"`
	// PasswordHash holds the argon2id parameters for stored credentials.
	PasswordHash PasswordHash `koanf:"password_hash"`
	// Limits bound what one client can cost.
	Limits Limits `koanf:"limits"`
	// SMTP tunes the SMTP front end and the relay queue.
	SMTP SMTP `koanf:"smtp"`
	// Submission tunes the submission front end (listen.submission,
	// listen.submissions).
	Submission Submission `koanf:"submission"`
	// Sieve bounds users' Sieve scripts.
	Sieve Sieve `koanf:"sieve"`
	// Outbound is how mail for other domains leaves once mailcapture
	// sends it itself.
	Outbound Outbound `koanf:"outbound"`
	// Vault is the opt-in credential vault.
	Vault Vault `koanf:"vault"`
	// ShutdownTimeout bounds a graceful stop (SIGTERM): sessions end with
	// BYE/-ERR at a command boundary, SMTP transactions and capture
	// batches in progress finish. Default 30s.
	ShutdownTimeout time.Duration `koanf:"shutdown_timeout"`
	// Log configures logging.
	Log Log `koanf:"log"`
}

// Accounts names the accounts: an account is one legacy mailbox, named by
// its canonical address.
type Accounts struct {
	// DefaultDomain completes a login without a domain ("bob" is the
	// account bob@<default_domain>). Default: the only entry of domains,
	// when there is one; with several and none set, such logins are
	// refused.
	DefaultDomain string `koanf:"default_domain"`
}

// DefaultDomain is the domain that completes a bare login, or "" for none.
func (c *Config) DefaultDomain() string {
	if c.Accounts.DefaultDomain != "" {
		return strings.ToLower(c.Accounts.DefaultDomain)
	}
	if len(c.Domains) == 1 {
		return strings.ToLower(c.Domains[0])
	}
	return ""
}

// Addresses is the admin's alias table.
type Addresses struct {
	// File is the alias table in Postfix virtual(5) syntax ("alias
	// target, target..." per line; "@domain target" a catch-all). Read
	// at start, on SIGHUP and when it changes; a bad line is reported with
	// its number and the table in force stays. Empty: no aliases.
	File string `koanf:"file"`
}

// Legacy describes the legacy server's endpoints.
type Legacy struct {
	// IMAP is the legacy IMAP endpoint. Default address empty (no IMAP),
	// tls "starttls".
	IMAP Endpoint `koanf:"imap"`
	// POP3 is the legacy POP3 endpoint. Default address empty (no POP3),
	// tls "starttls".
	POP3 Endpoint `koanf:"pop3"`
	// SMTP is where mail for accounts not yet captured is relayed.
	SMTP SMTPEndpoint `koanf:"smtp"`
	// Submission is the legacy submission server (usually port 587):
	// users' mail for other domains goes out through it, on their own
	// authenticated session, until outbound.relay is set or the legacy
	// server is retired. Default address empty, tls "starttls".
	Submission Endpoint `koanf:"submission"`
	// ManageSieve is the legacy ManageSieve server (RFC 5804, usually
	// port 4190): captures copy each account's Sieve scripts from it.
	// Empty: none, and no scripts are copied.
	ManageSieve Endpoint `koanf:"managesieve"`
	// TLSVerify verifies the legacy server's certificates. Default true.
	TLSVerify bool `koanf:"tls_verify"`
	// Timeout bounds every single exchange with the legacy server.
	// Default 60s.
	Timeout time.Duration `koanf:"timeout"`
	// Retired ends follow syncs: once set, the legacy server is never
	// contacted again for captured accounts. Default false.
	Retired bool `koanf:"retired"`
	// Master is an optional legacy master user, which lets the relay
	// queue look into any account's legacy INBOX.
	Master Master `koanf:"master"`
	// LoginName is the name a login is sent to the legacy server with:
	// "as_typed" (default: what the user typed, and for captures the name
	// the legacy server last accepted), "address" (the account's
	// canonical address) or "local_part" (the part before the "@").
	LoginName string `koanf:"login_name"`
}

// Master is a legacy master user (Dovecot's master users, Cyrus's
// proxy/admin users): one login that acts for any account. serve uses it
// for one thing: after a delivery to the legacy server was interrupted
// (crash, dropped connection), it looks for the message in the
// recipient's INBOX instead of sending it twice.
type Master struct {
	// User is the master user's name. Empty: no master user.
	User string `koanf:"user"`
	// PasswordFile holds its password (first line); mode 600.
	PasswordFile string `koanf:"password_file"`
	// Style is "separator" (default: LOGIN account*master) or "sasl"
	// (AUTHENTICATE PLAIN with the account as authorization identity).
	Style string `koanf:"style"`
	// Separator goes between account and master user. Default "*".
	Separator string `koanf:"separator"`
}

// Password reads the master user's password from PasswordFile.
func (m Master) Password() (string, error) {
	fi, err := os.Stat(m.PasswordFile)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %04o): chmod 600 it", m.PasswordFile, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(m.PasswordFile)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return "", fmt.Errorf("%s holds no password on its first line", m.PasswordFile)
	}
	return line, nil
}

// Endpoint is a legacy IMAP or POP3 server.
type Endpoint struct {
	// Address is host:port.
	Address string `koanf:"address"`
	// TLS is "none", "starttls" or "implicit".
	TLS string `koanf:"tls"`
}

// SMTPEndpoint is the legacy server's mail intake.
type SMTPEndpoint struct {
	// Address is host:port.
	Address string `koanf:"address"`
	// TLS is "none", "starttls" or "implicit". Default "starttls".
	TLS string `koanf:"tls"`
	// Protocol is "smtp" (default) or "lmtp".
	Protocol string `koanf:"protocol"`
}

// Listen holds the addresses mailcapture listens on (host:port).
type Listen struct {
	// IMAP is plain IMAP with STARTTLS (usually :143).
	IMAP string `koanf:"imap"`
	// IMAPS is IMAP over implicit TLS (usually :993); needs tls.cert.
	IMAPS string `koanf:"imaps"`
	// POP3 is plain POP3 with STLS (usually :110).
	POP3 string `koanf:"pop3"`
	// POP3S is POP3 over implicit TLS (usually :995); needs tls.cert.
	POP3S string `koanf:"pop3s"`
	// SMTP is the MX listener (usually :25).
	SMTP string `koanf:"smtp"`
	// Submission is mail submission with STARTTLS (usually :587).
	Submission string `koanf:"submission"`
	// Submissions is mail submission over implicit TLS (usually :465);
	// needs tls.cert.
	Submissions string `koanf:"submissions"`
	// ManageSieve is where users edit their Sieve scripts (RFC 5804,
	// usually :4190), with STARTTLS.
	ManageSieve string `koanf:"managesieve"`
	// HTTP serves /metrics, /healthz, /readyz and /status.
	HTTP string `koanf:"http"`
}

// TLS names the PEM certificate chain and key.
type TLS struct {
	// Cert is the PEM certificate chain file.
	Cert string `koanf:"cert"`
	// Key is the PEM private key file.
	Key string `koanf:"key"`
}

// Capture tunes how hard mailcapture works the legacy server.
type Capture struct {
	// Workers is how many accounts are captured at once, at most (fewer
	// while the legacy server shows errors). Default 4.
	Workers int `koanf:"workers"`
	// ConnectionsPerAccount is how many legacy connections one account's
	// capture uses. Default 2.
	ConnectionsPerAccount int `koanf:"connections_per_account"`
	// ConnectRate limits capture jobs started per second across accounts;
	// 0 (default) means no limit.
	ConnectRate float64 `koanf:"connect_rate"`
	// RetryMin and RetryMax bound the wait before a failed capture job is
	// retried (exponential, with jitter). Defaults 5s and 10m.
	RetryMin time.Duration `koanf:"retry_min"`
	RetryMax time.Duration `koanf:"retry_max"`
	// TrustCondStore lets a delta pass skip a folder whose legacy
	// UIDVALIDITY, UIDNEXT, message count and CONDSTORE HIGHESTMODSEQ are
	// those of its last sync. Turn it off for a legacy server whose
	// modification sequences do not move with every flag change. Default
	// true.
	TrustCondStore bool `koanf:"trust_condstore"`
}

// Vault keeps legacy passwords sealed (AES-256-GCM) with a key the admin
// provides, so that captures resume after a restart and captured accounts
// keep following the legacy server without logins. Off unless KeyFile is
// set; wiped by retire-legacy.
type Vault struct {
	// KeyFile holds the 256-bit key: 32 raw bytes, 64 hex digits or
	// base64; mode 600. Empty: no vault, no password kept.
	KeyFile string `koanf:"key_file"`
	// FollowInterval is how often captured accounts with a sealed password
	// are followed without a login. Default 30m.
	FollowInterval time.Duration `koanf:"follow_interval"`
}

// Limits bound what a client, or many, can cost.
type Limits struct {
	// FailedLoginsPerAddress is the most failed logins from one client
	// address within FailedLoginWindow. Default 20.
	FailedLoginsPerAddress int `koanf:"failed_logins_per_address"`
	// FailedLoginsPerAccount is the most failed logins for one account
	// within FailedLoginWindow, whoever tries: a guessing run stops after a
	// few tries, well before the legacy server's own lockout. Default 5.
	FailedLoginsPerAccount int `koanf:"failed_logins_per_account"`
	// FailedLoginWindow is the sliding window of the failure counts.
	// Default 10m.
	FailedLoginWindow time.Duration `koanf:"failed_login_window"`
	// ConnectionsPerAddress is the most open connections from one client
	// address, over all listeners. Default 50.
	ConnectionsPerAddress int `koanf:"connections_per_address"`
	// Connections is the most open connections in all. Default 20000.
	Connections int `koanf:"connections"`
	// IMAPIdleTimeout closes a proxied IMAP session that sent nothing for
	// this long (RFC 9051: at least 30 minutes). Default 30m.
	IMAPIdleTimeout time.Duration `koanf:"imap_idle_timeout"`
	// POP3IdleTimeout closes a POP3 session that sent nothing for this long
	// (RFC 1939: at least 10 minutes). Default 10m.
	POP3IdleTimeout time.Duration `koanf:"pop3_idle_timeout"`
}

// SMTP tunes the SMTP front end and the relay queue.
type SMTP struct {
	// MaxMessageBytes is the SIZE limit. Default 52428800 (50 MiB).
	MaxMessageBytes int64 `koanf:"max_message_bytes"`
	// MaxRecipients is the most RCPT TO per transaction. Default 100.
	MaxRecipients int `koanf:"max_recipients"`
	// MaxHops is the most Received headers a message may carry; more means
	// a mail loop, refused with 554. Default 50.
	MaxHops int `koanf:"max_hops"`
	// CommandTimeout closes a session silent for this long between
	// commands (RFC 5321: 5 minutes). Default 5m.
	CommandTimeout time.Duration `koanf:"command_timeout"`
	// DataTimeout bounds one DATA transfer. Default 10m.
	DataTimeout time.Duration `koanf:"data_timeout"`
	// MessageLifetime is how long the relay queue retries a message before
	// it is bounced to its sender. Default 120h (5 days).
	MessageLifetime time.Duration `koanf:"message_lifetime"`
	// RetryMin and RetryMax bound the wait before the relay queue tries a
	// message again (doubling from RetryMin). Defaults 1m and 64m.
	RetryMin time.Duration `koanf:"retry_min"`
	RetryMax time.Duration `koanf:"retry_max"`
	// RecipientDelimiter separates a local part from its extension
	// ("bob+lists" is bob's); each character is a delimiter, as Postfix's
	// recipient_delimiter. Default "+"; empty turns extensions off.
	RecipientDelimiter string `koanf:"recipient_delimiter"`
}

// Submission tunes what users send.
type Submission struct {
	// StartsCapture: a first login over submission records the account
	// and starts its capture, as an IMAP login does. Default true.
	StartsCapture bool `koanf:"starts_capture"`
	// MaxMessagesPerHour bounds what one account may submit in an hour
	// (a stolen password cannot send a spam run). Default 300.
	MaxMessagesPerHour int `koanf:"max_messages_per_hour"`
}

// Sieve bounds the Sieve scripts users keep here.
type Sieve struct {
	// MaxScripts is how many scripts one account may keep. Default 20.
	MaxScripts int `koanf:"max_scripts"`
	// MaxScriptBytes is the largest script (at most 1 MiB). Default
	// 1048576.
	MaxScriptBytes int `koanf:"max_script_bytes"`
}

// Outbound is how mail for other domains leaves.
type Outbound struct {
	// Relay is the new outbound MTA. Once set (or once the legacy server
	// is retired), submitted mail for other domains is spooled here and
	// relayed to it, with retries and DSNs.
	Relay OutboundRelay `koanf:"relay"`
}

// OutboundRelay is an outbound MTA.
type OutboundRelay struct {
	// Address is host:port. Empty: none.
	Address string `koanf:"address"`
	// TLS is "none", "starttls" (default) or "implicit".
	TLS string `koanf:"tls"`
	// Username and PasswordFile, if set, authenticate (AUTH PLAIN) at it.
	Username     string `koanf:"username"`
	PasswordFile string `koanf:"password_file"`
}

// Password reads the relay's password from PasswordFile (first line;
// mode 600).
func (o OutboundRelay) Password() (string, error) {
	return Master{PasswordFile: o.PasswordFile}.Password()
}

// PasswordHash holds argon2id parameters (RFC 9106).
type PasswordHash struct {
	// Time is the number of passes. Default 1.
	Time uint32 `koanf:"time"`
	// MemoryKiB is the memory cost in KiB. Default 65536 (64 MiB).
	MemoryKiB uint32 `koanf:"memory_kib"`
	// Threads is the parallelism. Default 2.
	Threads uint8 `koanf:"threads"`
	// Concurrency is how many hashes are computed at once; more logins
	// wait. It bounds the memory a login storm costs to Concurrency ×
	// MemoryKiB. Default 0: the number of CPUs.
	Concurrency int `koanf:"concurrency"`
}

// Log configures the structured logger.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `koanf:"level"`
	// Format is text (default) or json.
	Format string `koanf:"format"`
}

// Default returns the configuration used where the file, the environment
// and the flags are silent.
func Default() Config {
	return Config{
		DataDir: "./data",
		Mode:    "capture",
		Legacy: Legacy{
			IMAP:       Endpoint{TLS: "starttls"},
			POP3:       Endpoint{TLS: "starttls"},
			SMTP:       SMTPEndpoint{TLS: "starttls", Protocol: "smtp"},
			Submission: Endpoint{TLS: "starttls"}, ManageSieve: Endpoint{TLS: "starttls"},
			TLSVerify: true,
			Timeout:   60 * time.Second,
			Master:    Master{Style: "separator", Separator: "*"},
			LoginName: "as_typed",
		},
		Capture:         Capture{Workers: 4, ConnectionsPerAccount: 2, RetryMin: 5 * time.Second, RetryMax: 10 * time.Minute, TrustCondStore: true},
		TrustedNetworks: []string{"127.0.0.0/8", "::1/128"},
		PasswordHash:    PasswordHash{Time: 1, MemoryKiB: 64 * 1024, Threads: 2},
		Limits: Limits{FailedLoginsPerAddress: 20, FailedLoginsPerAccount: 5, FailedLoginWindow: 10 * time.Minute,
			ConnectionsPerAddress: 50, Connections: 20000, IMAPIdleTimeout: 30 * time.Minute, POP3IdleTimeout: 10 * time.Minute},
		SMTP: SMTP{MaxMessageBytes: 50 << 20, MaxRecipients: 100, MaxHops: 50, CommandTimeout: 5 * time.Minute,
			DataTimeout: 10 * time.Minute, MessageLifetime: 120 * time.Hour, RetryMin: time.Minute, RetryMax: 64 * time.Minute,
			RecipientDelimiter: "+"},
		Submission:      Submission{StartsCapture: true, MaxMessagesPerHour: 300},
		Sieve:           Sieve{MaxScripts: 20, MaxScriptBytes: 1 << 20},
		Outbound:        Outbound{Relay: OutboundRelay{TLS: "starttls"}},
		Log:             Log{Level: "info", Format: "text"},
		ShutdownTimeout: 30 * time.Second,
		Vault:           Vault{FollowInterval: 30 * time.Minute},
	}
}
