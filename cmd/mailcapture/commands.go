package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"mailcapture/addresses"
	"mailcapture/config"
	"mailcapture/metrics"
	"mailcapture/status"
	"mailcapture/store"
)

// configFlags adds --config and one flag per config key.
func configFlags(fs *pflag.FlagSet) *string {
	path := fs.String("config", "", "configuration file (YAML); MAILCAPTURE_* variables and the flags below override it")
	config.RegisterFlags(fs)
	return path
}

// parseConfig parses the command line and loads the configuration it names.
func parseConfig(env *environment, fs *pflag.FlagSet, path *string, args []string) (config.Config, error) {
	if err := parse(fs, args); err != nil {
		return config.Config{}, err
	}
	return loadConfig(env, fs, path)
}

// loadConfig loads the configuration the parsed command line names, with
// its alias table checked.
func loadConfig(env *environment, fs *pflag.FlagSet, path *string) (config.Config, error) {
	cfg, err := config.Load(config.Sources{File: *path, Environ: env.environ, Flags: fs})
	if err != nil {
		return cfg, err
	}
	// The alias table is part of the configuration: a line it cannot
	// use is reported like a bad key.
	if f := cfg.Addresses.File; f != "" {
		if _, _, err := addresses.LoadFile(f, cfg.DefaultDomain()); err != nil {
			return config.Config{}, &config.Error{Problems: []config.Problem{{Key: "addresses.file", Message: strings.ReplaceAll(err.Error(), "\n", "\n    ")}}}
		}
	}
	return cfg, nil
}

func newLogger(c config.Log, env *environment) *slog.Logger {
	level := new(slog.LevelVar)
	return newLevelLogger(c, env, level)
}

// logLevel maps log.level (validated) to a slog level.
func logLevel(name string) slog.Level {
	return map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[name]
}

// newLevelLogger is newLogger with a level that can change while running.
func newLevelLogger(c config.Log, env *environment, level *slog.LevelVar) *slog.Logger {
	level.Set(logLevel(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(env.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(env.stderr, opts))
}

func hashParams(c config.PasswordHash) store.HashParams {
	return store.HashParams{Time: c.Time, MemoryKiB: c.MemoryKiB, Threads: c.Threads, Concurrency: c.Concurrency}
}

func runCheckConfig(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "check-config", "--config FILE", "load and validate a configuration, then print the keys as loaded")
	path := configFlags(fs)
	cfg, err := parseConfig(env, fs, path, args)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "configuration is valid\n\n")
	printConfig(env, cfg)
	return nil
}

// printConfig prints every key as loaded (the TLS key path is shown, its
// content never).
func printConfig(env *environment, c config.Config) {
	rows := [][2]string{
		{"data_dir", c.DataDir}, {"hostname", c.Hostname}, {"domains", strings.Join(c.Domains, ", ")}, {"mode", c.Mode},
		{"legacy.imap", fmt.Sprintf("%s (tls %s)", orNone(c.Legacy.IMAP.Address), c.Legacy.IMAP.TLS)},
		{"legacy.pop3", fmt.Sprintf("%s (tls %s)", orNone(c.Legacy.POP3.Address), c.Legacy.POP3.TLS)},
		{"legacy.smtp", fmt.Sprintf("%s (%s, tls %s)", orNone(c.Legacy.SMTP.Address), c.Legacy.SMTP.Protocol, c.Legacy.SMTP.TLS)},
		{"legacy.submission", fmt.Sprintf("%s (tls %s)", orNone(c.Legacy.Submission.Address), c.Legacy.Submission.TLS)},
		{"legacy.managesieve", fmt.Sprintf("%s (tls %s)", orNone(c.Legacy.ManageSieve.Address), c.Legacy.ManageSieve.TLS)},
		{"outbound.relay", fmt.Sprintf("%s (tls %s)", orNone(c.Outbound.Relay.Address), c.Outbound.Relay.TLS)},
		{"legacy.tls_verify", fmt.Sprint(c.Legacy.TLSVerify)}, {"legacy.timeout", c.Legacy.Timeout.String()},
		{"legacy.retired", fmt.Sprint(c.Legacy.Retired)},
		{"listen.imap", orNone(c.Listen.IMAP)}, {"listen.imaps", orNone(c.Listen.IMAPS)},
		{"listen.pop3", orNone(c.Listen.POP3)}, {"listen.pop3s", orNone(c.Listen.POP3S)},
		{"listen.smtp", orNone(c.Listen.SMTP)}, {"listen.submission", orNone(c.Listen.Submission)},
		{"listen.submissions", orNone(c.Listen.Submissions)}, {"listen.managesieve", orNone(c.Listen.ManageSieve)}, {"listen.http", orNone(c.Listen.HTTP)},
		{"tls.cert", orNone(c.TLS.Cert)}, {"tls.key", orNone(c.TLS.Key)},
		{"password_hash", fmt.Sprintf("argon2id t=%d m=%d KiB p=%d", c.PasswordHash.Time, c.PasswordHash.MemoryKiB, c.PasswordHash.Threads)},
		{"log", fmt.Sprintf("%s, %s", c.Log.Level, c.Log.Format)},
	}
	for _, r := range rows {
		fmt.Fprintf(env.stdout, "  %-18s %s\n", r[0], r[1])
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func runStatus(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "status", "--config FILE [--json]", "show the migration's progress, read from the store (also while serve runs)")
	path := configFlags(fs)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	st, err := openReadOnly(ctx, env, fs, path, args)
	if err != nil {
		return err
	}
	defer st.Close()
	r, err := status.Collect(ctx, st, status.Options{PerAccount: true})
	if err != nil {
		return err
	}
	if *asJSON {
		return r.WriteJSON(env.stdout)
	}
	return r.WriteText(env.stdout, env.isTerminal)
}

// loginRow is one account in `mailcapture logins`.
type loginRow struct {
	Account   string           `json:"account"`
	State     string           `json:"state"`
	Protocols map[string]int64 `json:"protocols"`
	First     time.Time        `json:"first_login"`
	Last      time.Time        `json:"last_login"`
}

func runLogins(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "logins", "--config FILE [--json]",
		"list the accounts that logged in (over which protocols, when, how often) and their migration state; in shadow mode this forecasts coverage: accounts never seen need `mailcapture capture`")
	path := configFlags(fs)
	asJSON := fs.Bool("json", false, "print the list as JSON")
	st, err := openReadOnly(ctx, env, fs, path, args)
	if err != nil {
		return err
	}
	defer st.Close()
	records, err := st.Logins(ctx)
	if err != nil {
		return err
	}
	var rows []*loginRow
	byName := map[string]*loginRow{}
	for _, r := range records {
		key := strings.ToLower(r.Account)
		row := byName[key]
		if row == nil {
			row = &loginRow{Account: r.Account, State: "unknown", Protocols: map[string]int64{}, First: r.First, Last: r.Last}
			if acct, err := st.Account(ctx, r.Account); err == nil {
				row.State = string(acct.State)
			}
			byName[key] = row
			rows = append(rows, row)
		}
		row.Protocols[r.Protocol] += r.Count
		if r.First.Before(row.First) {
			row.First = r.First
		}
		if r.Last.After(row.Last) {
			row.Last = r.Last
		}
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []*loginRow{}
		}
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tSTATE\tIMAP\tPOP3\tFIRST LOGIN\tLAST LOGIN")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", r.Account, r.State, r.Protocols["imap"], r.Protocols["pop3"],
			r.First.Format(time.DateTime), r.Last.Format(time.DateTime))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d accounts logged in\n", len(rows))
	return nil
}

func runVersion(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "version", "", "print the version and how the binary was built")
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, versionLine())
	return nil
}

// versionLine is the version with the build information the binary
// carries: Go version, VCS revision and time, platform.
func versionLine() string {
	goVersion, revision, built, modified := "unknown", "", "", false
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				built = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	line := fmt.Sprintf("mailcapture %s (%s, %s/%s", version, goVersion, runtime.GOOS, runtime.GOARCH)
	if revision != "" {
		line += ", revision " + revision[:min(12, len(revision))]
		if modified {
			line += "+changes"
		}
	}
	if built != "" {
		line += ", committed " + built
	}
	return line + ")"
}

// readinessChecks: the store takes writes, and each configured legacy
// endpoint accepts TCP connections.
func readinessChecks(cfg config.Config, st *store.Store) []metrics.Check {
	checks := []metrics.Check{{Name: "store", Run: st.Ping}}
	for _, ep := range [][2]string{{"legacy imap", cfg.Legacy.IMAP.Address}, {"legacy pop3", cfg.Legacy.POP3.Address},
		{"legacy smtp", cfg.Legacy.SMTP.Address}} {
		name, addr := ep[0], ep[1]
		if addr == "" || cfg.Legacy.Retired {
			continue
		}
		checks = append(checks, metrics.Check{Name: name, Run: func(ctx context.Context) error {
			d := net.Dialer{Timeout: 3 * time.Second}
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		}})
	}
	return checks
}
