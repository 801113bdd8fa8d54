package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"mailcapture/capture"
	"mailcapture/legacyclient"
	"mailcapture/metrics"
	"mailcapture/store"
)

func runCapture(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "capture", "--config FILE (--csv FILE | --accounts FILE --master-user NAME --master-password-file FILE)",
		"capture accounts nobody logs into, with their passwords from a CSV file or with a legacy master user")
	path := configFlags(fs)
	csvPath := fs.String("csv", "", "CSV file of account,password records")
	listPath := fs.String("accounts", "", "file with one account a line, captured with the master user")
	masterUser := fs.String("master-user", "", "legacy master user")
	masterPasswordFile := fs.String("master-password-file", "", "file holding the master user's password (first line)")
	masterStyle := fs.String("master-style", "separator", `how the master user logs in: "separator" (account*master) or "sasl" (PLAIN with authorization id)`)
	masterSeparator := fs.String("master-separator", "*", "separator between account and master user (separator style)")
	cfg, err := parseConfig(env, fs, path, args)
	if err != nil {
		return err
	}
	var accounts []capture.BulkAccount
	var master *legacyclient.MasterLogin
	switch {
	case (*csvPath == "") == (*listPath == ""):
		return fmt.Errorf("%w: give exactly one of --csv and --accounts", errUsage)
	case *csvPath != "":
		if *masterUser != "" {
			return fmt.Errorf("%w: --master-user goes with --accounts, not --csv", errUsage)
		}
		if accounts, err = readAccounts(*csvPath, capture.ReadCSV); err != nil {
			return err
		}
	default:
		if *masterUser == "" || *masterPasswordFile == "" {
			return fmt.Errorf("%w: --accounts needs --master-user and --master-password-file", errUsage)
		}
		if *masterStyle != "separator" && *masterStyle != "sasl" {
			return fmt.Errorf("%w: --master-style %q is not separator or sasl", errUsage, *masterStyle)
		}
		raw, err := os.ReadFile(*masterPasswordFile)
		if err != nil {
			return fmt.Errorf("--master-password-file: %w", err)
		}
		pw, _, _ := strings.Cut(string(raw), "\n")
		master = &legacyclient.MasterLogin{Username: *masterUser, Password: strings.TrimRight(pw, "\r"), Style: *masterStyle, Separator: *masterSeparator}
		if accounts, err = readAccounts(*listPath, capture.ReadAccountList); err != nil {
			return err
		}
	}
	if len(accounts) == 0 {
		return errors.New("no accounts to capture")
	}

	log := newLogger(cfg.Log, env)
	if env.isTerminal {
		// The progress display owns the terminal; only problems are logged.
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	st, err := store.Open(ctx, cfg.DataDir, store.Options{Hash: hashParams(cfg.PasswordHash), Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	// The accounts are recorded at once; their passwords are hashed once
	// the copies are done (argon2id is slow on purpose, and on the same
	// cores it would slow every copy down). An account left without a
	// hash by an interrupted run gets it on the next.
	names := make([]string, len(accounts))
	for i, a := range accounts {
		names[i] = a.Name
	}
	recorded, err := st.EnsureAccounts(ctx, names, store.StateCapturing)
	if err != nil {
		return err
	}
	var unhashed []capture.BulkAccount
	for i, a := range accounts {
		if a.Password != "" && !recorded[i].HasPassword {
			unhashed = append(unhashed, a)
		}
	}
	engine := capture.NewEngine(st, cfg, log)
	engine.Master = master
	sched := capture.NewScheduler(engine, cfg, log)
	sched.BackoffMin, sched.BackoffMax = 2*time.Second, time.Minute
	// A bulk run gives up on an account after its third failed attempt;
	// running the command again resumes it.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	dones := make([]<-chan struct{}, len(accounts))
	for i, a := range accounts {
		dones[i] = sched.Submit(a.Name, a.Password, false)
	}
	finished := make(chan struct{})
	go func() {
		sched.Run(runCtx)
		close(finished)
	}()
	p := &progressView{env: env, st: st, sched: sched, accounts: accounts}
	allDone := make(chan struct{})
	go func() {
		for _, d := range dones {
			<-d
		}
		close(allDone)
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		p.draw(ctx, false)
		select {
		case <-allDone:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if p.givenUp() {
				break loop
			}
		}
	}
	stop()
	<-finished
	if err := hashPasswords(ctx, env, st, unhashed); err != nil {
		return err
	}
	return p.summary(context.WithoutCancel(ctx), ctx.Err() != nil)
}

// hashPasswords stores the hash of each account's CSV password, unless
// the run was interrupted (the next run hashes what is left).
func hashPasswords(ctx context.Context, env *environment, st *store.Store, accounts []capture.BulkAccount) error {
	if len(accounts) == 0 {
		return nil
	}
	start := time.Now()
	for i, a := range accounts {
		if ctx.Err() != nil {
			fmt.Fprintf(env.stdout, "interrupted: %d of %d passwords hashed, the next run hashes the others\n", i, len(accounts))
			return nil
		}
		if err := st.SetPassword(ctx, a.Name, a.Password); err != nil && ctx.Err() == nil {
			return fmt.Errorf("record the password of %s: %w", a.Name, err)
		}
	}
	fmt.Fprintf(env.stdout, "passwords of %d accounts hashed in %.1fs\n", len(accounts), time.Since(start).Seconds())
	return nil
}

func readAccounts(path string, read func(io.Reader) ([]capture.BulkAccount, error)) ([]capture.BulkAccount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	accounts, err := read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return accounts, nil
}

// The metrics package counts the capture engine's work.
var _ capture.Observer = (*metrics.Capture)(nil)

// progressView shows a bulk capture's progress: bars on a terminal, one
// line per finished account otherwise.
type progressView struct {
	env      *environment
	st       *store.Store
	sched    *capture.Scheduler
	accounts []capture.BulkAccount
	lines    int
	reported map[string]bool
}

// maxAttempts is how often a bulk run tries an account before it gives up.
const maxAttempts = 3

// givenUp tells whether every account is finished or out of attempts.
func (p *progressView) givenUp() bool {
	for _, a := range p.accounts {
		s, _ := p.sched.Status(a.Name)
		switch s.State {
		case capture.JobReady, capture.JobStopped:
		case capture.JobWaiting:
			if s.Attempts < maxAttempts {
				return false
			}
		default:
			return false
		}
	}
	return true
}

type accountLine struct {
	name          string
	state         capture.JobState
	copied, total int64
	err           string
}

func (p *progressView) collect(ctx context.Context) ([]accountLine, int64, int64) {
	var out []accountLine
	var copied, total int64
	// Two queries a redraw, whatever the number of accounts.
	stored := map[string]store.Account{}
	if accts, err := p.st.Accounts(ctx); err == nil {
		for _, a := range accts {
			stored[strings.ToLower(a.Name)] = a // names are case-insensitive
		}
	}
	progress, _ := p.st.EveryAccountProgress(ctx)
	for _, a := range p.accounts {
		l := accountLine{name: a.Name}
		if s, ok := p.sched.Status(a.Name); ok {
			l.state, l.err = s.State, s.LastError
		}
		if acct, ok := stored[strings.ToLower(a.Name)]; ok {
			l.copied = progress[acct.ID].Messages
			l.total = max(acct.LegacyMessages, l.copied)
		}
		copied += l.copied
		total += l.total
		out = append(out, l)
	}
	return out, copied, total
}

func (p *progressView) draw(ctx context.Context, final bool) {
	lines, copied, total := p.collect(ctx)
	if !p.env.isTerminal {
		if p.reported == nil {
			p.reported = map[string]bool{}
		}
		for _, l := range lines {
			if (l.state == capture.JobReady || l.state == capture.JobStopped) && !p.reported[l.name] {
				p.reported[l.name] = true
				fmt.Fprintf(p.env.stdout, "%s: %s (%d messages)\n", l.name, describeState(l), l.copied)
			}
		}
		return
	}
	var b strings.Builder
	if p.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.lines)
	}
	n := 0
	row := func(format string, args ...any) {
		b.WriteString("\x1b[2K")
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\n")
		n++
	}
	row("overall  %s %d/%d messages", bar(copied, total, 30), copied, total)
	shown := 0
	for _, l := range lines {
		if shown == 20 {
			row("... and %d more accounts", len(lines)-shown)
			break
		}
		row("%-32s %s %7d/%-7d %s", clip(l.name, 32), bar(l.copied, l.total, 20), l.copied, l.total, describeState(l))
		shown++
	}
	p.lines = n
	io.WriteString(p.env.stdout, b.String())
}

func describeState(l accountLine) string {
	switch l.state {
	case capture.JobReady:
		return "done, verified"
	case capture.JobStopped:
		return "stopped: the legacy server refused the credentials"
	case capture.JobWaiting:
		return "retrying after: " + clip(l.err, 60)
	case capture.JobRunning:
		return "copying"
	case "":
		return "not started"
	}
	return string(l.state)
}

func bar(done, total int64, width int) string {
	filled := 0
	if total > 0 {
		filled = int(min(float64(done)/float64(total), 1) * float64(width))
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "]"
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// summary prints the outcome; an error if any account is not done.
func (p *progressView) summary(ctx context.Context, interrupted bool) error {
	p.draw(ctx, true)
	lines, copied, _ := p.collect(ctx)
	ready, failed := 0, 0
	for _, l := range lines {
		if l.state == capture.JobReady {
			ready++
			continue
		}
		failed++
		if !p.env.isTerminal && !p.reported[l.name] {
			fmt.Fprintf(p.env.stdout, "%s: %s (%d messages)\n", l.name, describeState(l), l.copied)
		}
	}
	fmt.Fprintf(p.env.stdout, "%d of %d accounts captured and verified, %d messages stored\n", ready, len(lines), copied)
	switch {
	case interrupted:
		return errors.New("interrupted: run the same command again to resume")
	case failed == 1:
		return errors.New("1 account not captured (see above); run again to resume it")
	case failed > 1:
		return fmt.Errorf("%d accounts not captured (see above); run again to resume them", failed)
	}
	return nil
}
