package front

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailcapture/capture"
	"mailcapture/imapstore"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/scratchfs"
	"mailcapture/store"
	"mailcapture/storetest"
)

const (
	benchUser     = "bench@example.org"
	benchMessages = 20000
	benchSessions = 10000
	// A proxied session holds two descriptors here (client and legacy
	// connection); the open-file limit of this process is checked against
	// what that needs.
	descriptorsSpare = 200
)

// BenchmarkFrontEnd measures what users feel of the front end, each figure
// against a peer measured in the same run on the same 20,000-message
// mailbox of a private Dovecot:
//   - login to first byte (connect, greeting, LOGIN, SELECT's first byte)
//     through the proxy vs directly at Dovecot (target <= 1.2x);
//   - UID FETCH 1:* BODY.PEEK[] through the splice vs directly (<= 1.1x);
//   - the local IMAP server serving the captured copy (all bodies, and
//     FLAGS of 1:*) vs Dovecot serving the original (target <= 1x);
//   - memory per idle session, 10,000 proxied and 10,000 local sessions
//     (target <= 30 KB).
func BenchmarkFrontEnd(b *testing.B) {
	proxiedSessions := proxiedSessionBudget(b)
	d := legacytest.Start(b, legacytest.Options{ManySessions: true})
	d.AddUser(b, benchUser, password)
	defer func() {
		if b.Failed() {
			if log, err := os.ReadFile(filepath.Join(d.Dir, "dovecot.log")); err == nil {
				lines := strings.Split(strings.TrimSpace(string(log)), "\n")
				var notable []string
				for _, l := range lines {
					if !strings.Contains(l, "Info: ") {
						notable = append(notable, l)
					}
				}
				fmt.Printf("front bench: Dovecot's warnings and errors:\n%s\n", strings.Join(notable[max(0, len(notable)-15):], "\n"))
			}
		}
	}()
	msgs := legacytest.Generate(7, benchMessages, 20000)
	var total int64
	for _, m := range msgs {
		total += int64(len(m.Body))
	}
	start := time.Now()
	d.SeedInbox(b, benchUser, msgs)
	msgs = nil
	fmt.Printf("front bench: INBOX of %d messages, %.0f MB (written in %.1fs)\n", benchMessages, float64(total)/1e6, time.Since(start).Seconds())

	dir := scratchfs.Mount(b, 2048)
	st, err := store.Open(context.Background(), dir, store.Options{Hash: store.HashParams{Time: 1, MemoryKiB: 8192, Threads: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	imapEP := legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: time.Minute}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	front := &IMAPFront{Router: &Router{Store: st, Log: log}, Local: imapstore.NewServer(st, imapstore.Options{}), Legacy: imapEP, Log: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go front.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		front.Shutdown(ctx)
	}()
	proxy := ln.Addr().String()

	for i := 0; i < b.N; i++ {
		// The legacy route: the account is not captured yet.
		loginRaw(b, proxy).close() // first login records the account
		direct, proxied := compareMedian(b, 21, func() time.Duration { return timeToFirstByte(b, d.IMAPAddr) },
			func() time.Duration { return timeToFirstByte(b, proxy) })
		fmt.Printf("front bench: login to first byte: direct %.2fms, through the proxy %.2fms: %.2fx (target <= 1.2x)\n",
			ms(direct), ms(proxied), ratio(proxied, direct))
		b.ReportMetric(ratio(proxied, direct), "x-login")

		fetch := "UID FETCH 1:* BODY.PEEK[]"
		direct, proxied = compareMedian(b, 3, func() time.Duration { return timeCommand(b, d.IMAPAddr, fetch) },
			func() time.Duration { return timeCommand(b, proxy, fetch) })
		fmt.Printf("front bench: %s of %d messages: direct %.2fs, through the splice %.2fs: %.2fx (target <= 1.1x)\n",
			fetch, benchMessages, direct.Seconds(), proxied.Seconds(), ratio(proxied, direct))
		b.ReportMetric(ratio(proxied, direct), "x-splice-fetch")

		perSession := idleSessions(b, proxy, proxiedSessions)
		fmt.Printf("front bench: %d idle proxied sessions: %.1f KB each (target <= 30 KB)\n", proxiedSessions, perSession/1024)
		b.ReportMetric(perSession/1024, "KB-proxied-session")

		// Capture, then the local route.
		ctx := context.Background()
		engine := &capture.Engine{Store: st, IMAP: imapEP}
		res, err := engine.Pass(ctx, benchUser, password)
		if err != nil || (i == 0 && res.Added != benchMessages) {
			b.Fatalf("capture: %+v %v", res, err)
		}
		storetest.MarkCaptured(b, st, benchUser)
		// The first FETCH of a mailbox reads its metadata from the store;
		// later ones (any session) find it cached.
		cold := timeCommand(b, proxy, "FETCH 1:* (FLAGS)")
		fmt.Printf("front bench: FETCH 1:* (FLAGS), first since the mailbox was opened (metadata read from the store): %.3fs\n", cold.Seconds())
		for _, cmd := range []string{fetch, "FETCH 1:* (FLAGS)"} {
			dovecot, local := compareMedian(b, 3, func() time.Duration { return timeCommand(b, d.IMAPAddr, cmd) },
				func() time.Duration { return timeCommand(b, proxy, cmd) })
			fmt.Printf("front bench: %s of %d messages: Dovecot %.3fs, mailcapture's local server %.3fs: %.2fx (target <= 1x)\n",
				cmd, benchMessages, dovecot.Seconds(), local.Seconds(), ratio(local, dovecot))
			b.ReportMetric(ratio(local, dovecot), "x-local-"+strings.Fields(cmd)[len(strings.Fields(cmd))-1])
		}
		perSession = idleSessions(b, proxy, benchSessions)
		fmt.Printf("front bench: %d idle local sessions: %.1f KB each (target <= 30 KB)\n", benchSessions, perSession/1024)
		b.ReportMetric(perSession/1024, "KB-local-session")

		// Back to the legacy route for the next round.
		st.Transition(ctx, benchUser, store.StateCaptured, store.StateCapturing)
	}
}

// proxiedSessionBudget returns how many proxied sessions this process can
// hold: benchSessions, or fewer when the open-file limit (which only a
// privileged process may raise) is below two descriptors per session.
func proxiedSessionBudget(b *testing.B) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur < benchSessions+descriptorsSpare {
		b.Fatalf("open-file limit %d: below %d local sessions", lim.Cur, benchSessions)
	}
	n := min(benchSessions, (int(lim.Cur)-descriptorsSpare)/2)
	if n < benchSessions {
		fmt.Printf("front bench: open-file limit %d (hard): %d proxied sessions (2 descriptors each) instead of %d\n", lim.Cur, n, benchSessions)
	}
	return n
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func ratio(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }

// compareMedian runs the two alternately n times and returns each median.
func compareMedian(b *testing.B, n int, peer, ours func() time.Duration) (time.Duration, time.Duration) {
	var p, o []time.Duration
	for range n {
		p = append(p, peer())
		o = append(o, ours())
	}
	slices.Sort(p)
	slices.Sort(o)
	return p[n/2], o[n/2]
}

// rawIMAP is a minimal IMAP client that skips literals unread.
type rawIMAP struct {
	b   *testing.B
	c   net.Conn
	r   *bufio.Reader
	tag int
}

func dialRaw(b *testing.B, addr string) *rawIMAP {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	r := &rawIMAP{b: b, c: c, r: bufio.NewReaderSize(c, 1<<16)}
	if line, err := r.r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		b.Fatalf("greeting from %s: %q %v", addr, line, err)
	}
	return r
}

func loginRaw(b *testing.B, addr string) *rawIMAP {
	r := dialRaw(b, addr)
	r.run(fmt.Sprintf("LOGIN %q %q", benchUser, password), nil)
	return r
}

func (r *rawIMAP) close() { r.c.Close() }

// run sends a command and reads to its tagged completion; firstByte, if
// set, is called when the first byte of the answer arrives.
func (r *rawIMAP) run(cmd string, firstByte func()) {
	r.tag++
	t := "t" + strconv.Itoa(r.tag)
	if _, err := fmt.Fprintf(r.c, "%s %s\r\n", t, cmd); err != nil {
		r.b.Fatal(err)
	}
	if firstByte != nil {
		if _, err := r.r.Peek(1); err != nil {
			r.b.Fatal(err)
		}
		firstByte()
	}
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			r.b.Fatalf("%s: %v", cmd, err)
		}
		if strings.HasPrefix(line, t+" ") {
			if !strings.HasPrefix(line, t+" OK") {
				r.b.Fatalf("%s: %s", cmd, line)
			}
			return
		}
		if i := strings.LastIndexByte(line, '{'); i >= 0 && strings.HasSuffix(line, "}\r\n") {
			if n, err := strconv.ParseInt(line[i+1:len(line)-3], 10, 64); err == nil {
				if _, err := io.CopyN(io.Discard, r.r, n); err != nil {
					r.b.Fatal(err)
				}
			}
		}
	}
}

// timeToFirstByte: connect, greeting, LOGIN, then SELECT INBOX up to the
// first byte of its answer.
func timeToFirstByte(b *testing.B, addr string) time.Duration {
	start := time.Now()
	r := loginRaw(b, addr)
	defer r.close()
	var d time.Duration
	r.run("SELECT INBOX", func() { d = time.Since(start) })
	return d
}

// timeCommand logs in, examines INBOX and times one command.
func timeCommand(b *testing.B, addr, cmd string) time.Duration {
	r := loginRaw(b, addr)
	defer r.close()
	r.run("EXAMINE INBOX", nil)
	start := time.Now()
	r.run(cmd, nil)
	return time.Since(start)
}

// idleClients is a Python script that opens n logged-in IMAP sessions,
// says "ready", and holds them until its standard input closes: the
// clients live in another process, with descriptors of their own.
const idleClients = `
import socket, sys
host, port, n, user, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
conns = []
for i in range(n):
    s = socket.create_connection((host, port))
    f = s.makefile("rb")
    if not f.readline().startswith(b"* OK"):
        sys.exit("bad greeting")
    s.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    while True:
        line = f.readline()
        if line.startswith(b"a "):
            if not line.startswith(b"a OK"):
                sys.exit("login failed: %r" % line)
            break
        if not line:
            sys.exit("connection closed at session %d" % i)
    conns.append((s, f))
print("ready", flush=True)
sys.stdin.read()
`

// idleSessions opens n logged-in sessions through addr from another
// process and returns the growth of this process's heap and goroutine
// stacks per session, then ends them.
func idleSessions(b *testing.B, addr string, n int) float64 {
	host, port, _ := net.SplitHostPort(addr)
	goroutines := runtime.NumGoroutine()
	before := memInUse()
	cmd := exec.Command("python3", "-c", idleClients, host, port, strconv.Itoa(n), benchUser, password)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("%d idle sessions: %q %v", n, line, err)
	}
	after := memInUse()
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	// Let the server side wind down before the next measurement (bounded).
	for i := 0; i < 300 && runtime.NumGoroutine() > goroutines+5; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	return float64(after-before) / float64(n)
}

// memInUse is the heap in use plus goroutine stacks, after a collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
