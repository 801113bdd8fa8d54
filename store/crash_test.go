package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashBody is the deterministic content of capture message uid or spooled
// message seq, of a size between 1 KB and 300 KB.
func crashBody(kind string, n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	size := 1024 + int(float64(299*1024)*r.Float64()*r.Float64()*r.Float64())
	var b bytes.Buffer
	fmt.Fprintf(&b, "Message-ID: <%s-%d@crash.test>\r\nSubject: %s %d\r\n\r\n", kind, n, kind, n)
	line := []byte(strings.Repeat(fmt.Sprintf("%s %d ", kind, n), 8) + "\r\n")
	for b.Len() < size {
		b.Write(line)
	}
	return b.Bytes()
}

const crashEnv = "MAILCAPTURE_STORE_CRASH_WRITER"

// TestMain turns the test binary into TestCrashSafety's writer when it is
// started as that child.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashWriter(dir)
		return
	}
	os.Exit(m.Run())
}

// crashWriter is the child process of TestCrashSafety: it writes until it
// is killed.
func crashWriter(dir string) {
	ctx := context.Background()
	s, err := Open(ctx, dir, Options{Hash: testHash})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	ledger, err := os.OpenFile(filepath.Join(dir, "ledger"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	acct, err := s.Account(ctx, "crash@example.org")
	if err != nil {
		acct, err = s.CreateAccount(ctx, "crash@example.org", "pw", StateCapturing)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	inbox, err := s.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		inbox, err = s.CreateMailbox(ctx, acct.ID, MailboxSpec{Name: "INBOX", UIDValidity: 99})
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	// Resume like a capture does: from the highest stored UID, re-sending
	// a few already stored messages, which must be recognised.
	uids, _ := s.UIDs(ctx, inbox.ID)
	next := 1
	if len(uids) > 0 {
		next = max(1, int(uids[len(uids)-1])-3)
	}
	spooled, _ := s.Spooled(ctx)
	seq := 100000 + len(spooled)*1000 + rand.IntN(1000)
	out := bufio.NewWriter(os.Stdout)
	for round := 0; ; round++ {
		fmt.Fprintln(out, "batch", round)
		out.Flush()
		b := s.NewBatch()
		n := 5 + rand.IntN(20)
		for i := 0; i < n; i++ {
			uid := uint32(next + i)
			if err := b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: uid, LegacyUID: uid, Flags: []string{`\Seen`}}, bytes.NewReader(crashBody("capture", int(uid)))); err != nil {
				fmt.Println("ERROR", err)
				os.Exit(2)
			}
		}
		if _, err := b.Commit(ctx); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		for i := 0; i < n; i++ {
			fmt.Fprintf(ledger, "M %d\n", next+i)
		}
		next += n
		fmt.Fprintln(out, "spool", round)
		out.Flush()
		for i := 0; i < 2; i++ {
			seq++
			e, err := s.Enqueue(ctx, RouteLegacy, 0, Envelope{From: "a@example.net", To: []string{"crash@example.org"}}, bytes.NewReader(crashBody("spool", seq)))
			if err != nil {
				fmt.Println("ERROR", err)
				os.Exit(2)
			}
			fmt.Fprintf(ledger, "S %d %d\n", e.ID, seq)
		}
		if round%3 == 2 {
			// Deliveries remove spooled messages too.
			// The intent is logged first: a kill between the two leaves
			// a message that may or may not be gone, never a lost one.
			if due, _ := s.DueSpool(ctx, time.Now(), 1); len(due) == 1 {
				fmt.Fprintf(ledger, "D %d\n", due[0].ID)
				if err := s.Dequeue(ctx, due[0].ID); err != nil {
					fmt.Println("ERROR", err)
					os.Exit(2)
				}
			}
		}
	}
}

// TestCrashSafety kills a writing process with SIGKILL at many points and
// checks the store after each restart: every committed message is there
// byte for byte, nothing half-written is visible, no body file is orphaned
// and re-inserting never duplicates.
func TestCrashSafety(t *testing.T) {
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := 0; round < rounds; round++ {
		killChildAfterProgress(t, dir, 1+rng.IntN(6), time.Duration(rng.IntN(20000))*time.Microsecond)
		checkCrashedStore(t, dir)
	}
	// A final check that the store also reached its later rounds.
	s := openTest(t, dir)
	acct, _ := s.Account(context.Background(), "crash@example.org")
	p, _ := s.AccountProgress(context.Background(), acct.ID)
	t.Logf("after %d kills: %d messages, %d bytes stored", rounds, p.Messages, p.Bytes)
	if p.Messages < int64(rounds) {
		t.Fatalf("only %d messages after %d rounds: the writer made no progress", p.Messages, rounds)
	}
}

// killChildAfterProgress starts the writer, waits until it has reported
// progress lines lines, waits delay more and kills it.
func killChildAfterProgress(t *testing.T, dir string, lines int, delay time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	seen := 0
	for seen < lines && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ERROR") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("writer failed: %s", sc.Text())
		}
		if strings.HasPrefix(sc.Text(), "batch") || strings.HasPrefix(sc.Text(), "spool") {
			seen++
		}
	}
	time.Sleep(delay) // lands the kill at a random instant of the work
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	err = cmd.Wait()
	if seen < lines {
		t.Fatalf("writer stopped after %d progress lines: %v", seen, err)
	}
}

func checkCrashedStore(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, dir, Options{Hash: testHash})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	assertNoStrayFiles(t, s)

	acct, err := s.Account(ctx, "crash@example.org")
	if err != nil {
		return // killed before the account was committed
	}
	inbox, err := s.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		return
	}
	// Every stored message is whole and is the message its UID names.
	msgs, err := s.Messages(ctx, inbox.ID, AllUIDs)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[uint32]bool{}
	for _, m := range msgs {
		want := crashBody("capture", int(m.UID))
		raw, err := s.ReadBody(m.ID)
		if err != nil || !bytes.Equal(raw, want) || m.SHA256 != sha256.Sum256(want) || m.Size != int64(len(want)) {
			t.Fatalf("message UID %d is not whole (%d of %d bytes): %v", m.UID, len(raw), len(want), err)
		}
		stored[m.UID] = true
	}
	spool := map[int64]bool{}
	entries, err := s.Spooled(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := s.OpenSpooled(e.ID)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		buf.ReadFrom(f)
		f.Close()
		var seq int
		fmt.Sscanf(e.MessageID, "<spool-%d@crash.test>", &seq)
		if !bytes.Equal(buf.Bytes(), crashBody("spool", seq)) {
			t.Fatalf("spooled message %d (seq %d) is not whole", e.ID, seq)
		}
		spool[e.ID] = true
	}
	// Everything acknowledged (in the ledger) is there.
	ledger, _ := os.ReadFile(filepath.Join(dir, "ledger"))
	dequeued := map[int64]bool{}
	for _, line := range strings.Split(string(ledger), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "D" {
			id, _ := strconv.ParseInt(f[1], 10, 64)
			dequeued[id] = true
		}
	}
	for _, line := range strings.Split(string(ledger), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "M":
			if !stored[uint32(n)] {
				t.Fatalf("committed message UID %d lost", n)
			}
		case "S":
			if !spool[n] && !dequeued[n] {
				t.Fatalf("acknowledged spooled message %d lost", n)
			}
		}
	}
	// UIDs are dense from 1: no gap, so nothing was skipped on resume.
	for i, m := range msgs {
		if m.UID != uint32(i+1) {
			t.Fatalf("UID %d at position %d: a message was skipped or duplicated", m.UID, i+1)
		}
	}
	// Re-inserting what is stored duplicates nothing.
	if len(msgs) > 0 {
		b := s.NewBatch()
		for _, m := range msgs[max(0, len(msgs)-5):] {
			b.Add(ctx, NewMessage{MailboxID: inbox.ID, UID: m.UID, LegacyUID: m.UID}, bytes.NewReader(crashBody("capture", int(m.UID))))
		}
		res, err := b.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if !r.Duplicate {
				t.Fatalf("re-insert of UID %d was not recognised as a duplicate", r.UID)
			}
		}
		if after, _ := s.UIDs(ctx, inbox.ID); len(after) != len(msgs) {
			t.Fatalf("re-insert changed the count: %d -> %d", len(msgs), len(after))
		}
	}
}
