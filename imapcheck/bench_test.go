package imapcheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"mailcapture/legacytest"
	"mailcapture/scratchfs"
)

// BenchmarkIMAPServers runs the checker's command mix against Dovecot and
// against mailcapture in the same run, sessions kept open, both writing
// to the same fresh journaled filesystem with their durability on
// (Dovecot's mail_fsync = optimized): commands per second, and the median
// latency of each command, mailcapture against Dovecot.
func BenchmarkIMAPServers(b *testing.B) {
	mnt := scratchfs.Mount(b, 4096)
	us := users(5)
	d := 20 * time.Second
	if v := os.Getenv("IMAPCHECK_TIME"); v != "" {
		d, _ = time.ParseDuration(v)
	}
	cfg := Config{Users: us, Clients: 10, Duration: d, Seed: 7, Messages: 30}
	dov := legacytest.Start(b, legacytest.Options{ManySessions: true, Fsync: true, Dir: mnt})
	for _, u := range us {
		dov.AddUser(b, u.Name, u.Password)
	}
	storeDir := filepath.Join(mnt, "store")
	os.MkdirAll(storeDir, 0o755)
	local, _, _ := startLocalIn(b, us, storeDir)
	var reports [2]Report
	for i, addr := range []string{dov.IMAPAddr, local} {
		exec.Command("sync").Run()
		cfg.Addr = addr
		r, err := Run(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if r.ErrorCount() > 0 {
			logReport(b, []string{"dovecot", "mailcapture"}[i], r)
			b.Fatalf("%d consistency errors", r.ErrorCount())
		}
		reports[i] = r
	}
	dr, mr := reports[0], reports[1]
	fmt.Printf("IMAP servers, %d clients on %d users for %v each, sessions kept open:\n", cfg.Clients, len(us), d)
	fmt.Printf("  commands per second: mailcapture %.0f, Dovecot %.0f: %.2fx (target >= 1.0x)\n", mr.PerSecond(), dr.PerSecond(), mr.PerSecond()/dr.PerSecond())
	for _, cmd := range []string{"STORE", "UID STORE", "EXPUNGE", "APPEND", "FETCH", "UID FETCH", "SELECT", "SEARCH", "STATUS", "COPY", "MOVE", "NOOP"} {
		m, dv := mr.Median[cmd], dr.Median[cmd]
		if dv == 0 {
			continue
		}
		target := ""
		switch cmd {
		case "STORE", "EXPUNGE", "APPEND":
			target = " (target <= 1.0x)"
		}
		fmt.Printf("  median %-10s mailcapture %8v, Dovecot %8v: %.2fx%s\n", cmd, m.Round(time.Microsecond), dv.Round(time.Microsecond), float64(m)/float64(dv), target)
	}
}
