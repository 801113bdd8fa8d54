package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacytest"
	"mailcapture/store"
)

// childEnv makes the test binary run mailcapture's main instead of the
// tests (the child of TestSMTPSurvivesSIGKILL).
const childEnv = "MAILCAPTURETEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if addr := os.Getenv("MAILCAPTURETEST_PPROF"); addr != "" { // profiling a child: go tool pprof http://addr/debug/pprof/heap
			go http.ListenAndServe(addr, nil)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		env := &environment{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, environ: os.Environ()}
		code := run(ctx, env, os.Args[1:])
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// loadSenders is a Python script: parallel smtplib senders of 10 KB
// messages, in turn to a legacy-route recipient, a local-route one, and
// an alias of both (one message, two routes), printing "OK recipient
// message-id" for each 250, until the server goes away.
const loadSenders = `
import smtplib, sys, threading
host, port, prefix, senders = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lock = threading.Lock()
def say(*words):
    with lock:
        print(*words, flush=True)
def send(w):
    i = 0
    try:
        s = smtplib.SMTP(host, port, timeout=20)
        while True:
            to = ["legacy@example.org", "local@example.org", "both@example.org"][i % 3]
            mid = "%s-%d-%d@load.example.net" % (prefix, w, i)
            s.sendmail("sender@example.net", [to], "Message-ID: <%s>\r\nSubject: load\r\n\r\n%s" % (mid, ("x" * 76 + "\r\n") * 130))
            say("OK", to, mid)
            i += 1
    except Exception as e:
        say("STOP", w, type(e).__name__)
threads = [threading.Thread(target=send, args=(w,)) for w in range(senders)]
for t in threads: t.start()
for t in threads: t.join()
`

// bothAlias is the alias table of TestSMTPSurvivesSIGKILL: one address
// whose mail goes to the local account and to the legacy server at once.
const bothAlias = "both@example.org  legacy@example.org, local@example.org\n"

// copiesOf is how many copies a message to rcpt makes: one, or one per
// target of the alias.
func copiesOf(rcpt string) int {
	if rcpt == "both@example.org" {
		return 2
	}
	return 1
}

// TestSMTPSurvivesSIGKILL kills serve with SIGKILL at random points under
// mixed load, many times in a row: ten senders deliver to both routes,
// and to an alias whose targets take one route each,
// while a user's login starts (or resumes) the capture of a 500-message
// account, which is cut over in some round. After each kill, before the
// next start, checkAfterKill checks the invariants on what the kill left.
// At the end every message that got a 250 is found exactly once, by
// Message-ID, in the legacy mailbox (legacy route) or the local one (local
// route), and the captured account equals the legacy one (folders,
// UIDVALIDITY, UIDs, flags, bytes). A kill between the legacy server's
// answer and the spool's dequeue leaves the message in doubt; the queue
// finds it in the legacy INBOX with the master user and does not send it
// again.
func TestSMTPSurvivesSIGKILL(t *testing.T) {
	const rounds = 8
	d := legacytest.Start(t, legacytest.Options{MasterUser: "admin", MasterPassword: "master pw"})
	d.AddUser(t, "legacy@example.org", "pw")
	d.AddUser(t, captureUser, capturePass)
	d.Populate(t, captureUser, capturePass, []legacytest.Folder{{Name: "INBOX", Subscribed: true, Messages: legacytest.Generate(103, 300, 12000)},
		{Name: "Archive", Messages: legacytest.Generate(104, 200, 12000)}})
	path, dataDir, environ := bulkConfig(t, d)
	seedCapturedAccount(t, dataDir, "local@example.org")
	masterPW := filepath.Join(t.TempDir(), "master.pw")
	if err := os.WriteFile(masterPW, []byte("master pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	aliases := filepath.Join(t.TempDir(), "virtual")
	if err := os.WriteFile(aliases, []byte(bothAlias), 0o600); err != nil {
		t.Fatal(err)
	}
	environ = append(environ, "MAILCAPTURE_LISTEN__IMAP=127.0.0.1:0", "MAILCAPTURE_LISTEN__SMTP=127.0.0.1:0", "MAILCAPTURE_LEGACY__SMTP__ADDRESS="+d.LMTPAddr,
		"MAILCAPTURE_LEGACY__SMTP__PROTOCOL=lmtp", "MAILCAPTURE_LEGACY__SMTP__TLS=none",
		"MAILCAPTURE_LEGACY__MASTER__USER=admin", "MAILCAPTURE_LEGACY__MASTER__PASSWORD_FILE="+masterPW,
		"MAILCAPTURE_ADDRESSES__FILE="+aliases, childEnv+"=1")

	acked := map[string]string{} // Message-ID -> recipient
	inDoubt := 0                 // relayed messages a kill left in doubt
	rng := rand.New(rand.NewPCG(7, 11))
	for round := 0; round < rounds; round++ {
		child, addrs := startChild(t, path, environ)
		// The capture account's user logs in: its capture starts, or
		// resumes where the last kill left it, or it is served locally.
		go func() {
			if c, err := imapclient.DialInsecure(addrs["listen.imap"], nil); err == nil {
				c.Login(captureUser, capturePass).Wait()
				c.Close()
			}
		}()
		host, port, _ := net.SplitHostPort(addrs["listen.smtp"])
		killLoadedChild(t, round, child, 20+rng.IntN(120), func(f []string) {
			if len(f) == 3 && f[0] == "OK" {
				acked["<"+f[2]+">"] = f[1]
			}
		}, loadSenders, host, port, fmt.Sprintf("r%d", round), "10")
		child.Wait()
		inDoubt += checkAfterKill(t, round, d, dataDir, acked)
	}
	if inDoubt == 0 {
		t.Fatalf("no kill caught a relayed message in flight: the test proved nothing about them")
	}
	// A last run drains the relay queue and finishes the capture.
	child, addrs := startChild(t, path, environ)
	waitSpool(t, environ, path, 0)
	c, err := imapclient.DialInsecure(addrs["listen.imap"], nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(captureUser, capturePass).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for i := 0; ; i++ {
		code, out, _ := runCLI(t, environ, "accounts", "--config", path, "show", captureUser, "--json")
		if code == 0 && strings.Contains(out, `"state": "captured"`) {
			break
		}
		if i == 600 {
			t.Fatalf("the capture did not finish after the kills: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c, err = imapclient.DialInsecure(addrs["listen.imap"], nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(captureUser, capturePass).Wait(); err != nil {
		t.Fatal(err)
	}
	local := legacytest.SnapshotIMAP(t, c)
	c.Close()
	assertSameSnapshot(t, d.Snapshot(t, captureUser, capturePass), local)
	child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Fatalf("serve after the kills: %v", err)
	}

	found := map[string]int{}
	localIDs := storedMessageIDs(t, dataDir, "local@example.org")
	for _, id := range localIDs {
		found[id]++
	}
	legacyIDs := map[string]int{}
	for _, m := range d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages {
		id := headerValue(string(m.Body), "Message-ID")
		legacyIDs[id]++
	}
	lost, wrongPlace, localDup, legacyDup := 0, 0, 0, 0
	for id, rcpt := range acked {
		inLocal, inLegacy := found[id], legacyIDs[id]
		switch {
		case inLocal+inLegacy == 0, rcpt == "both@example.org" && (inLocal == 0 || inLegacy == 0):
			lost++
		case rcpt == "local@example.org" && inLegacy > 0, rcpt == "legacy@example.org" && inLocal > 0:
			wrongPlace++
		}
	}
	for _, n := range found {
		if n > 1 {
			localDup += n - 1
		}
	}
	for _, n := range legacyIDs {
		if n > 1 {
			legacyDup += n - 1
		}
	}
	t.Logf("%d kills; %d messages acknowledged; local %d, legacy %d stored; %d legacy duplicates", rounds, len(acked), len(localIDs), len(d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages), legacyDup)
	if lost > 0 || wrongPlace > 0 || localDup > 0 || legacyDup > 0 {
		t.Fatalf("after %d kills: %d acknowledged messages lost, %d in the wrong place, %d local duplicates, %d legacy duplicates",
			rounds, lost, wrongPlace, localDup, legacyDup)
	}
}

// checkAfterKill checks docs/CONTRACT.md's invariants on the state a kill left
// behind, before the next start repairs anything: every copy of every
// acknowledged message (two for the alias) is in the local INBOX, the
// legacy INBOX or the relay spool; no
// message is stored twice, locally or at the legacy server; what the
// capture has stored so far of the capture account is exact (same
// UIDVALIDITY, and each stored UID has the legacy message's bytes).
// It returns how many spooled messages the kill left in doubt.
func checkAfterKill(t *testing.T, round int, d *legacytest.Dovecot, dataDir string, acked map[string]string) int {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("round %d: open the store after the kill: %v", round, err)
	}
	defer st.Close()
	where := map[string]int{}
	local, err := st.Account(ctx, "local@example.org")
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, local.ID, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	problems := []string{}
	seen := map[string]int{}
	for _, m := range msgs {
		if seen[m.MessageID]++; seen[m.MessageID] == 2 {
			problems = append(problems, "stored twice locally: "+m.MessageID)
		}
		where[m.MessageID]++
	}
	clear(seen)
	legacyInbox := d.Snapshot(t, "legacy@example.org", "pw")["INBOX"].Messages
	for _, m := range legacyInbox {
		id := headerValue(string(m.Body), "Message-ID")
		if seen[id]++; seen[id] == 2 {
			problems = append(problems, "delivered twice to the legacy server: "+id)
		}
		where[id]++
	}
	spooled, err := st.Spooled(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inDoubt := 0
	for _, e := range spooled {
		where[e.MessageID]++
		if st.InFlight(e.ID) {
			inDoubt++
		}
	}
	for id, rcpt := range acked {
		if where[id] < copiesOf(rcpt) {
			problems = append(problems, fmt.Sprintf("acknowledged for %s, then lost: %s (%d of %d copies found)", rcpt, id, where[id], copiesOf(rcpt)))
		}
	}
	problems = append(problems, partialCopyProblems(t, st, d, captureUser, capturePass)...)
	if len(problems) > 0 {
		t.Fatalf("after kill %d: %d problems:\n%s", round, len(problems), strings.Join(problems, "\n"))
	}
	t.Logf("after kill %d: %d acknowledged messages all found (%d local, %d legacy, %d spooled, %d of them in doubt)", round, len(acked), len(msgs), len(legacyInbox), len(spooled), inDoubt)
	return inDoubt
}

const captureUser, capturePass = "capture@example.org", "capture pass"

// assertSameSnapshot compares two IMAP views of a mailbox.
func assertSameSnapshot(t *testing.T, want, got map[string]*legacytest.SnapshotFolder) {
	t.Helper()
	for name, wf := range want {
		gf := got[name]
		if gf == nil || gf.UIDValidity != wf.UIDValidity || len(gf.Messages) != len(wf.Messages) {
			t.Errorf("folder %q differs after the kills", name)
			continue
		}
		for i, wm := range wf.Messages {
			gm := gf.Messages[i]
			if gm.UID != wm.UID || strings.Join(gm.Flags, " ") != strings.Join(wm.Flags, " ") || !bytes.Equal(gm.Body, wm.Body) {
				t.Errorf("folder %q message %d (UID %d) differs after the kills", name, i, wm.UID)
			}
		}
	}
}

// startChild runs serve in a child process and returns it with its
// listeners' addresses by key (it returns once the SMTP listener, opened
// last, listens).
func startChild(t *testing.T, path string, environ []string) (*exec.Cmd, map[string]string) {
	t.Helper()
	return startChildLogging(t, path, environ, nil)
}

// startChildLogging is startChild that hands every later line of serve's
// log to sink (nil drops them); sink is called from one goroutine.
func startChildLogging(t *testing.T, path string, environ []string, sink func(line string)) (*exec.Cmd, map[string]string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = environ
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(stderr)
	re := regexp.MustCompile(`msg=listening key=(listen\.\w+) addr=(\S+)`)
	var said []string
	addrs := map[string]string{}
	for sc.Scan() {
		said = append(said, sc.Text())
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			addrs[m[1]] = m[2]
			if m[1] == "listen.smtp" {
				go func() {
					for sc.Scan() {
						if sink != nil {
							sink(sc.Text())
						}
					}
				}()
				return cmd, addrs
			}
		}
	}
	t.Fatalf("serve ended before listening: %v\n%s", sc.Err(), strings.Join(said, "\n"))
	return nil, nil
}

// storedMessageIDs returns the Message-IDs in an account's local INBOX.
func storedMessageIDs(t *testing.T, dataDir, account string) []string {
	t.Helper()
	var ids []string
	for _, m := range storedMessages(t, dataDir, account) {
		ids = append(ids, m.MessageID)
	}
	return ids
}

// storedMessages returns the messages of an account's local INBOX (none
// if the account has none yet).
func storedMessages(t *testing.T, dataDir, account string) []store.Message {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dataDir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acct, err := st.Account(ctx, account)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := st.MailboxByName(ctx, acct.ID, "INBOX")
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// headerValue returns a header field's value from a message.
func headerValue(msg, name string) string {
	for _, line := range strings.Split(msg, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// partialCopyProblems compares what the store holds of account with the
// legacy mailbox: each stored folder has the legacy UIDVALIDITY, each
// message copied from the legacy server the bytes of the legacy message
// it came from. A capture still running may hold less than the legacy
// server, never anything else; mail delivered locally after a cut-over
// has no legacy UID and is left out.
func partialCopyProblems(t *testing.T, st *store.Store, d *legacytest.Dovecot, account, password string) []string {
	t.Helper()
	ctx := context.Background()
	acct, err := st.Account(ctx, account)
	if err != nil {
		return nil // nothing stored yet
	}
	legacy := d.Snapshot(t, account, password)
	boxes, err := st.Mailboxes(ctx, acct.ID)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, mb := range boxes {
		lf := legacy[mb.Name]
		if lf == nil || lf.UIDValidity != mb.UIDValidity {
			problems = append(problems, fmt.Sprintf("%s: folder %q differs from the legacy one", account, mb.Name))
			continue
		}
		byUID := map[uint32]legacytest.SnapshotMessage{}
		for _, lm := range lf.Messages {
			byUID[lm.UID] = lm
		}
		stored, err := st.Messages(ctx, mb.ID, store.AllUIDs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range stored {
			if m.LegacyUID == 0 {
				continue
			}
			lm, ok := byUID[m.LegacyUID]
			if !ok || sha256.Sum256(lm.Body) != m.SHA256 {
				problems = append(problems, fmt.Sprintf("%s: %s UID %d is not the legacy message", account, mb.Name, m.UID))
			}
		}
	}
	return problems
}
