package capture

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/store"
	"mailcapture/storetest"
)

const crashEnv = "MAILCAPTURE_CAPTURE_CRASH"

// TestMain turns the test binary into TestCaptureSurvivesSIGKILL's child
// when started as one.
func TestMain(m *testing.M) {
	if spec := os.Getenv(crashEnv); spec != "" {
		crashChild(spec)
		return
	}
	os.Exit(m.Run())
}

// crashChild runs passes until killed, announcing each commit.
func crashChild(spec string) {
	dir, addr, _ := strings.Cut(spec, ",")
	ctx := context.Background()
	st, err := store.Open(ctx, dir, store.Options{Hash: testHash})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if _, err := st.Account(ctx, user); err != nil {
		if _, err := st.CreateAccount(ctx, user, password, store.StateCapturing); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
	}
	out := bufio.NewWriter(os.Stdout)
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: addr, TLS: "none", Timeout: 10 * time.Second}, BatchMessages: 5, FetchChunk: 13}
	e.afterCommit = func() {
		fmt.Fprintln(out, "commit")
		out.Flush()
	}
	for {
		if _, err := e.Pass(ctx, user, password); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		fmt.Fprintln(out, "pass")
		out.Flush()
	}
}

// TestCaptureSurvivesSIGKILL kills a capturing process with SIGKILL at
// random points many times. After each restart, every stored message is
// byte for byte the legacy message its UID names; at the end the copy is
// exact, with nothing stored twice.
func TestCaptureSurvivesSIGKILL(t *testing.T) {
	rounds := 15
	d := legacytest.Start(t, legacytest.Options{})
	populate(t, d)
	legacy := d.Snapshot(t, user, password)
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), crashEnv+"="+dir+","+d.IMAPAddr)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		want := 1 + rng.IntN(4)
		seen := 0
		for seen < want && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ERROR") {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("child: %s", sc.Text())
			}
			seen++ // a commit, or a whole pass once the copy is complete
		}
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // a random instant of the work
		cmd.Process.Signal(syscall.SIGKILL)
		go func() {
			for sc.Scan() {
			}
		}()
		cmd.Wait()
		checkPartialCopy(t, dir, legacy)
	}
	st := storetest.Open(t, dir)
	e := &Engine{Store: st, IMAP: legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: 10 * time.Second}}
	if _, err := e.Converge(context.Background(), user, password, 5); err != nil {
		t.Fatal(err)
	}
	assertSameMailbox(t, d.Snapshot(t, user, password), localSnapshot(t, st, user))
}

// checkPartialCopy: whatever a killed capture left is a subset of the
// legacy mailbox, message for message.
func checkPartialCopy(t *testing.T, dir string, legacy map[string]*legacytest.SnapshotFolder) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dir, store.Options{Hash: testHash})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer st.Close()
	if _, err := st.Account(ctx, user); err != nil {
		return
	}
	for name, f := range localSnapshot(t, st, user) {
		lf := legacy[name]
		if lf == nil {
			t.Fatalf("folder %q is not on the legacy server", name)
		}
		byUID := map[uint32]legacytest.SnapshotMessage{}
		for _, m := range lf.Messages {
			byUID[m.UID] = m
		}
		for _, m := range f.Messages {
			lm, ok := byUID[m.UID]
			if !ok || !bytes.Equal(lm.Body, m.Body) || lm.Size != m.Size {
				t.Fatalf("folder %q UID %d: not the legacy message (%d bytes vs %d)", name, m.UID, len(m.Body), len(lm.Body))
			}
		}
		if len(f.Messages) > len(lf.Messages) {
			t.Fatalf("folder %q: %d messages stored, the legacy folder has %d", name, len(f.Messages), len(lf.Messages))
		}
	}
}
