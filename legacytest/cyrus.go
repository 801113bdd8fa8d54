package legacytest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// cyrusBin is where Debian's cyrus-common keeps Cyrus's master and tools.
const cyrusBin = "/usr/lib/cyrus/bin"

// cyrusIMAPDs are where Cyrus's imapd may be: installed (package
// cyrus-imapd), or unpacked by scripts/test-deps.sh (the package conflicts
// with dovecot-imapd, so the two cannot be installed together).
var cyrusIMAPDs = []string{cyrusBin + "/imapd", "/opt/mailcapture-test/cyrus-imapd/usr/lib/cyrus/bin/imapd"}

// Cyrus is a running private Cyrus IMAP server (Debian's Cyrus 3.6), a
// second legacy implementation beside Dovecot. It has Cyrus's classic
// namespace (personal folders under "INBOX." with "." as separator),
// virtual domains (user@domain logins), users in a private sasldb, and
// special-use folders created at the first login. It runs as the cyrus
// user, on loopback ports, with every path in a temporary directory.
type Cyrus struct {
	Dir      string
	IMAPAddr string
	cmd      *exec.Cmd
	imapd    string // path of Cyrus's imapd
	// imap is the server-independent IMAP side of this package
	// (Populate, Snapshot) pointed at this server.
	imap *Dovecot
}

// StartCyrus starts a Cyrus and registers its stop with t.Cleanup.
func StartCyrus(t testing.TB) *Cyrus {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cyrusBin, "master")); err != nil {
		t.Fatalf("legacytest: cyrus-common is not installed (make test installs it: scripts/test-deps.sh): %v", err)
	}
	imapd := ""
	for _, p := range cyrusIMAPDs {
		if _, err := os.Stat(p); err == nil {
			imapd = p
			break
		}
	}
	if imapd == "" {
		t.Fatalf("legacytest: Cyrus's imapd is in none of %v (make test unpacks it: scripts/test-deps.sh)", cyrusIMAPDs)
	}
	if _, err := exec.LookPath("saslpasswd2"); err != nil {
		t.Fatalf("legacytest: saslpasswd2 is not installed (package sasl2-bin): %v", err)
	}
	owner, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatalf("legacytest: no 'cyrus' user (created by cyrus-common): %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	dir, err := os.MkdirTemp("", "legacy-cyrus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, sub := range []string{"spool", "sieve", "run", "conf/db", "conf/proc", "conf/socket", "conf/lock", "conf/log",
		"conf/user", "conf/quota", "conf/sieve", "conf/msg", "conf/ptclient"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	c := &Cyrus{Dir: dir, imapd: imapd}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			t.Fatal(err)
		}
		c.IMAPAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		if err := c.writeConfig(); err != nil {
			t.Fatal(err)
		}
		if err := chownTree(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		if lastErr = c.start(uid, gid); lastErr == nil {
			c.imap = &Dovecot{IMAPAddr: c.IMAPAddr, Options: Options{Prefix: "INBOX.", Separator: "."}}
			t.Cleanup(c.Stop)
			return c
		}
	}
	t.Fatalf("legacytest: cyrus did not start: %v", lastErr)
	return nil
}

func (c *Cyrus) confPath() string { return filepath.Join(c.Dir, "imapd.conf") }

func (c *Cyrus) writeConfig() error {
	imapd := fmt.Sprintf(`configdirectory: %[1]s/conf
partition-default: %[1]s/spool
sievedir: %[1]s/sieve
admins: cyrus
altnamespace: no
unixhierarchysep: no
virtdomains: userid
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: %[1]s/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
autocreate_quota: 0
autocreate_inbox_folders: Sent|Drafts|Trash
specialusealways: yes
xlist-drafts: Drafts
xlist-sent: Sent
xlist-trash: Trash
lmtpsocket: %[1]s/run/lmtp
idlesocket: %[1]s/run/idle
notifysocket: %[1]s/run/notify
syslog_prefix: legacytest-cyrus
`, c.Dir)
	master := fmt.Sprintf(`START {
  recover cmd="%[3]s/ctl_cyrusdb -r -C %[1]s"
}
SERVICES {
  imap cmd="%[4]s -C %[1]s" listen="%[2]s" prefork=0
}
EVENTS {
}
`, c.confPath(), c.IMAPAddr, cyrusBin, c.imapd)
	if err := os.WriteFile(c.confPath(), []byte(imapd), 0o640); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, "cyrus.conf"), []byte(master), 0o640)
}

func (c *Cyrus) start(uid, gid int) error {
	cmd := exec.Command(filepath.Join(cyrusBin, "master"), "-D", "-C", c.confPath(), "-M", filepath.Join(c.Dir, "cyrus.conf"),
		"-p", filepath.Join(c.Dir, "run", "master.pid"))
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := awaitGreetings(cmd, "cyrus master", c.IMAPAddr); err != nil {
		return err
	}
	c.cmd = cmd
	return nil
}

// AddUser creates a login (its INBOX and special-use folders appear at
// the first login).
func (c *Cyrus) AddUser(t testing.TB, name, password string) {
	t.Helper()
	cmd := exec.Command("saslpasswd2", "-p", "-f", filepath.Join(c.Dir, "sasldb2"), "-c", name)
	cmd.Stdin = strings.NewReader(password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("legacytest: saslpasswd2 %s: %v\n%s", name, err, out)
	}
	owner, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	if err := os.Chown(filepath.Join(c.Dir, "sasldb2"), uid, gid); err != nil {
		t.Fatal(err)
	}
	c.imap.Login(t, name, password).Close() // creates the INBOX and its special-use folders
}

// Populate uploads folders for user, as Dovecot.Populate does (names are
// given with "/" and land under "INBOX."). Cyrus refuses a message with a
// bare LF ("NO Message contains bare newlines") or a malformed header
// ("NO Message contains invalid header"), so no Cyrus mailbox holds one:
// such line ends (and bare CRs) are given as CRLF, header lines without a
// colon are left out and control characters in the header dropped.
func (c *Cyrus) Populate(t testing.TB, user, password string, folders []Folder) {
	t.Helper()
	fixed := make([]Folder, len(folders))
	for i, f := range folders {
		fixed[i] = f
		fixed[i].Messages = make([]Message, len(f.Messages))
		for j, m := range f.Messages {
			m.Body = cleanHeader(crlf(m.Body))
			fixed[i].Messages[j] = m
		}
	}
	c.imap.Populate(t, user, password, fixed)
}

// cleanHeader drops header lines without a colon and control characters
// from the header section of a CRLF message.
func cleanHeader(b []byte) []byte {
	head, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok {
		return b
	}
	var out bytes.Buffer
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		if !bytes.Contains(line, []byte(":")) && len(line) > 0 && line[0] != ' ' && line[0] != '\t' {
			continue
		}
		for _, c := range line {
			if c >= 0x20 || c == '\t' {
				out.WriteByte(c)
			}
		}
		out.WriteString("\r\n")
	}
	out.WriteString("\r\n")
	out.Write(body)
	return out.Bytes()
}

// crlf turns every bare LF and bare CR of b into CRLF.
func crlf(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/32)
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case b[i] == '\r' || b[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b[i])
		}
	}
	return out
}

// Snapshot reads every folder and message of user over IMAP.
func (c *Cyrus) Snapshot(t testing.TB, user, password string) map[string]*SnapshotFolder {
	t.Helper()
	return c.imap.Snapshot(t, user, password)
}

// Stop stops Cyrus and all its processes.
func (c *Cyrus) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	stopGroup(c.cmd.Process.Pid)
	c.cmd = nil
}

func chownTree(root string, uid, gid int) error {
	return filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(path, uid, gid)
	})
}
