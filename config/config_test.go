package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

const validYAML = `
data_dir: %DATA%
hostname: mx.example.org
domains: [example.org]
legacy:
  imap: {address: "127.0.0.1:1143", tls: none}
  pop3: {address: "127.0.0.1:1110", tls: none}
  smtp: {address: "127.0.0.1:1025", tls: none, protocol: lmtp}
  tls_verify: false
listen:
  imap: "127.0.0.1:2143"
  smtp: "127.0.0.1:2525"
  http: "127.0.0.1:8080"
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	path := filepath.Join(dir, "mailcapture.yaml")
	body = strings.ReplaceAll(body, "%DATA%", data)
	body = strings.ReplaceAll(body, "%DIR%", dir)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// problemsOf loads the file and returns the problems reported, failing the
// test if the result is not an *Error.
func problemsOf(t *testing.T, src Sources) []Problem {
	t.Helper()
	_, err := Load(src)
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load: want *config.Error, got %v", err)
	}
	return cerr.Problems
}

func wantProblem(t *testing.T, problems []Problem, key, fragment string) {
	t.Helper()
	for _, p := range problems {
		if p.Key == key && strings.Contains(p.Message, fragment) {
			return
		}
	}
	t.Fatalf("no problem for key %q containing %q; got %+v", key, fragment, problems)
}

func TestLoadValid(t *testing.T) {
	cfg, err := Load(Sources{File: writeConfig(t, validYAML)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Legacy.IMAP.Address != "127.0.0.1:1143" || cfg.Legacy.SMTP.Protocol != "lmtp" {
		t.Fatalf("file values not applied: %+v", cfg.Legacy)
	}
	if cfg.Legacy.TLSVerify {
		t.Fatal("legacy.tls_verify: false not applied")
	}
	if cfg.PasswordHash.MemoryKiB != 64*1024 || cfg.Legacy.Timeout != time.Minute || cfg.Mode != "capture" {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestEnvironmentOverridesFileAndFlagsOverrideEnvironment(t *testing.T) {
	path := writeConfig(t, validYAML)
	environ := []string{
		"MAILCAPTURE_LEGACY__IMAP__ADDRESS=127.0.0.1:2222",
		"MAILCAPTURE_DOMAINS=a.example, b.example",
		"MAILCAPTURE_LEGACY__TIMEOUT=5s",
		"MAILCAPTURE_LISTEN__HTTP=127.0.0.1:9090",
		"OTHER_VARIABLE=ignored",
	}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--listen.http=127.0.0.1:9191", "--legacy.tls_verify=true"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(Sources{File: path, Environ: environ, Flags: fs})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Legacy.IMAP.Address != "127.0.0.1:2222" {
		t.Errorf("env did not override legacy.imap.address: %q", cfg.Legacy.IMAP.Address)
	}
	if strings.Join(cfg.Domains, ",") != "a.example,b.example" {
		t.Errorf("env list not split: %q", cfg.Domains)
	}
	if cfg.Legacy.Timeout != 5*time.Second {
		t.Errorf("env duration: %v", cfg.Legacy.Timeout)
	}
	if cfg.Listen.HTTP != "127.0.0.1:9191" {
		t.Errorf("flag did not override env: %q", cfg.Listen.HTTP)
	}
	if !cfg.Legacy.TLSVerify {
		t.Errorf("flag did not override file for legacy.tls_verify")
	}
	if cfg.Listen.SMTP != "127.0.0.1:2525" {
		t.Errorf("unset flag overrode the file: %q", cfg.Listen.SMTP)
	}
}

func TestUnknownKeys(t *testing.T) {
	path := writeConfig(t, validYAML+"legacy_imap: x\nlisten_http: y\n")
	problems := problemsOf(t, Sources{File: path})
	wantProblem(t, problems, "legacy_imap", "unknown key")
	wantProblem(t, problems, "listen_http", `did you mean "listen.http"`)

	path = writeConfig(t, strings.Replace(validYAML, "address: \"127.0.0.1:1143\"", "adress: \"127.0.0.1:1143\"", 1))
	wantProblem(t, problemsOf(t, Sources{File: path}), "legacy.imap.adress", `did you mean "legacy.imap.address"`)

	path = writeConfig(t, validYAML)
	problems = problemsOf(t, Sources{File: path, Environ: []string{"MAILCAPTURE_LEGACY__IMAP__ADRESS=x"}})
	wantProblem(t, problems, "legacy.imap.adress", "unknown environment variable")
}

func TestSectionGivenAsValue(t *testing.T) {
	path := writeConfig(t, "data_dir: %DATA%\ndomains: [example.org]\nlegacy:\n  imap: 127.0.0.1:143\n")
	wantProblem(t, problemsOf(t, Sources{File: path}), "legacy.imap", "is a section")
}

func TestBadValues(t *testing.T) {
	cases := []struct {
		name, from, to, key, fragment string
	}{
		{"malformed address", `"127.0.0.1:1143"`, `"127.0.0.1"`, "legacy.imap.address", "not host:port"},
		{"bad port", `"127.0.0.1:1143"`, `"127.0.0.1:99999"`, "legacy.imap.address", "no valid port"},
		{"no host", `"127.0.0.1:1143"`, `":1143"`, "legacy.imap.address", "no host"},
		{"listen malformed", `"127.0.0.1:2143"`, `"localhost-2143"`, "listen.imap", "not host:port"},
		{"tls mode", "tls: none, protocol", "tls: sometimes, protocol", "legacy.smtp.tls", `"sometimes" is not one of none, starttls, implicit`},
		{"protocol", "protocol: lmtp", "protocol: uucp", "legacy.smtp.protocol", `"uucp" is not one of smtp, lmtp`},
		{"no domains", "domains: [example.org]", "domains: []", "domains", "at least one"},
		{"bad domain", "domains: [example.org]", "domains: [\"exa mple.org\"]", "domains[0]", "not a domain"},
		{"bool type", "tls_verify: false", "tls_verify: maybe", "legacy.tls_verify", "boolean"},
		{"imaps without cert", "listen:\n", "listen:\n  imaps: \"127.0.0.1:2993\"\n", "listen.imaps", "needs a certificate"},
		{"pop3s without cert", "listen:\n", "listen:\n  pop3s: \"127.0.0.1:2995\"\n", "listen.pop3s", "needs a certificate"},
		{"missing cert file", "listen:\n", "tls: {cert: %DIR%/nope.pem, key: %DIR%/nope.key}\nlisten:\n", "tls.cert", "no such file"},
		{"cert without key", "listen:\n", "tls: {cert: %DIR%/nope.pem}\nlisten:\n", "tls.key", "tls.key is not"},
		{"data_dir is a file", "data_dir: %DATA%", "data_dir: %DIR%/mailcapture.yaml", "data_dir", "not a directory"},
		{"data_dir unreadable", "data_dir: %DATA%", "data_dir: %DIR%/mailcapture.yaml/sub", "data_dir", "cannot read"},
		{"data_dir without parent", "data_dir: %DATA%", "data_dir: %DIR%/missing/sub", "data_dir", "does not exist and neither does its parent"},
		{"no legacy server", "imap: {address: \"127.0.0.1:1143\", tls: none}\n  pop3: {address: \"127.0.0.1:1110\", tls: none}", "imap: {tls: none}", "legacy.imap.address", "IMAP or a POP3 address"},
		{"smtp listener without legacy smtp", "smtp: {address: \"127.0.0.1:1025\", tls: none, protocol: lmtp}", "smtp: {tls: none}", "legacy.smtp.address", "required when listen.smtp"},
		{"duration", "tls_verify: false", "tls_verify: false\n  timeout: soon", "legacy.timeout", "duration"},
		{"argon memory", "listen:\n", "password_hash: {memory_kib: 16}\nlisten:\n", "password_hash.memory_kib", "at least 8192"},
		{"idle timeout below the RFC", "listen:\n", "limits: {imap_idle_timeout: 5m}\nlisten:\n", "limits.imap_idle_timeout", "at least 30m"},
		{"total below per address", "listen:\n", "limits: {connections: 10, connections_per_address: 50}\nlisten:\n", "limits.connections", "at least 50"},
		{"hop limit zero", "listen:\n", "smtp: {max_hops: 0}\nlisten:\n", "smtp.max_hops", "at least 1"},
		{"submissions without cert", "listen:\n", "listen:\n  submissions: \"127.0.0.1:2465\"\n", "listen.submissions", "needs a certificate"},
		{"submission without a way out", "listen:\n", "listen:\n  submission: \"127.0.0.1:2587\"\n", "legacy.submission.address", "legacy.submission.address or outbound.relay.address"},
		{"relay user without password", "listen:\n", "outbound: {relay: {address: \"127.0.0.1:1587\", username: relay}}\nlisten:\n", "outbound.relay.password_file", "required with outbound.relay.username"},
		{"relay tls mode", "listen:\n", "outbound: {relay: {address: \"127.0.0.1:1587\", tls: maybe}}\nlisten:\n", "outbound.relay.tls", `"maybe" is not one of`},
		{"submission rate", "listen:\n", "submission: {max_messages_per_hour: 0}\nlisten:\n", "submission.max_messages_per_hour", "at least 1"},
		{"sieve size", "listen:\n", "sieve: {max_script_bytes: 2000000}\nlisten:\n", "sieve.max_script_bytes", "at most 1048576"},
		{"sieve count", "listen:\n", "sieve: {max_scripts: 0}\nlisten:\n", "sieve.max_scripts", "at least 1"},
		{"managesieve listener", "listen:\n", "listen:\n  managesieve: \"localhost-4190\"\n", "listen.managesieve", "not host:port"},
		{"trusted network", "listen:\n", "trusted_networks: [10.0.0.0/33]\nlisten:\n", "trusted_networks[0]", "not a CIDR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(validYAML, tc.from) {
				t.Fatalf("test case does not apply: %q not in the valid config", tc.from)
			}
			path := writeConfig(t, strings.Replace(validYAML, tc.from, tc.to, 1))
			wantProblem(t, problemsOf(t, Sources{File: path}), tc.key, tc.fragment)
		})
	}
}

func TestErrorListsEveryProblem(t *testing.T) {
	path := writeConfig(t, "data_dir: %DATA%\ndomains: []\nlegacy: {imap: {address: nowhere}}\n")
	_, err := Load(Sources{File: path})
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"domains: at least one", "legacy.imap.address: \"nowhere\" is not host:port"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestYAMLSyntaxErrorNamesFile(t *testing.T) {
	path := writeConfig(t, "domains: [example.org\n")
	_, err := Load(Sources{File: path})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("want an error naming %s, got %v", path, err)
	}
}

func TestValidCertificateAccepted(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	body := strings.Replace(validYAML, "listen:\n", "tls: {cert: "+cert+", key: "+key+"}\nlisten:\n  imaps: \"127.0.0.1:2993\"\n", 1)
	if _, err := Load(Sources{File: writeConfig(t, body)}); err != nil {
		t.Fatal(err)
	}
	// A certificate file that holds no certificate is refused.
	if err := os.WriteFile(cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, body)}), "tls.cert", "do not load")
}

func TestExampleConfigIsValidAndComplete(t *testing.T) {
	raw, err := os.ReadFile("../mailcapture.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range Keys() {
		leaf := key[strings.LastIndex(key, ".")+1:]
		if !strings.Contains(string(raw), leaf+":") {
			t.Errorf("mailcapture.example.yaml does not document %s", key)
		}
	}
	dir := t.TempDir()
	_, err = Load(Sources{File: "../mailcapture.example.yaml", Environ: []string{"MAILCAPTURE_DATA_DIR=" + dir}})
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
}

func writeSelfSigned(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"mx.example.org"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestREADMEDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range Keys() {
		if !strings.Contains(string(raw), "`"+key+"`") {
			t.Errorf("README.md's configuration table lacks `%s`", key)
		}
	}
}

func TestDiffNamesChangedKeys(t *testing.T) {
	a := Default()
	b := Default()
	b.Listen.IMAP = "127.0.0.1:1143"
	b.Limits.Connections = 7
	b.Domains = []string{"example.net"}
	got := strings.Join(Diff(a, b), " ")
	if got != "domains listen.imap limits.connections" {
		t.Fatalf("Diff = %q", got)
	}
	if d := Diff(a, Default()); len(d) != 0 {
		t.Fatalf("Diff of equal configurations: %v", d)
	}
}

func TestVaultKeyFileChecked(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "vault.key")
	os.WriteFile(key, bytes.Repeat([]byte{1}, 32), 0o600)
	body := strings.Replace(validYAML, "listen:\n", "vault: {key_file: "+key+"}\nlisten:\n", 1)
	if _, err := Load(Sources{File: writeConfig(t, body)}); err != nil {
		t.Fatal(err)
	}
	os.Chmod(key, 0o644)
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, body)}), "vault.key_file", "readable by others")
	os.Chmod(key, 0o600)
	os.WriteFile(key, []byte("short"), 0o600)
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, body)}), "vault.key_file", "not a 256-bit key")
}

func TestLegacyMasterChecked(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "master.pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	withMaster := func(extra string) string {
		return strings.Replace(validYAML, "  tls_verify: false\n", "  tls_verify: false\n  master: {user: admin, password_file: "+pw+extra+"}\n", 1)
	}
	cfg, err := Load(Sources{File: writeConfig(t, withMaster(""))})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cfg.Legacy.Master.Password(); err != nil || got != "s3cret" || cfg.Legacy.Master.Style != "separator" || cfg.Legacy.Master.Separator != "*" {
		t.Fatalf("master: %+v, password %q, %v", cfg.Legacy.Master, got, err)
	}
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, withMaster(", style: kerberos"))}), "legacy.master.style", "kerberos")
	os.Chmod(pw, 0o644)
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, withMaster(""))}), "legacy.master.password_file", "readable by others")
	os.Chmod(pw, 0o600)
	os.WriteFile(pw, []byte("\n"), 0o600)
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, withMaster(""))}), "legacy.master.password_file", "no password")
	os.Remove(pw)
	wantProblem(t, problemsOf(t, Sources{File: writeConfig(t, withMaster(""))}), "legacy.master.password_file", "no such file")
}
