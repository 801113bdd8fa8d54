// Command mailcapture moves a domain's mail off a legacy IMAP/POP3 server
// while its users keep working: see README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// command is one subcommand.
type command struct {
	name    string
	args    string
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

// environment is what a command talks to; tests replace it.
type environment struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	environ        []string
	// isTerminal: standard output is a terminal (progress bars).
	isTerminal bool
	// canAsk: standard input and output are terminals (questions).
	canAsk bool
	// reload receives a value for each SIGHUP (serve reloads).
	reload <-chan struct{}
}

func commands() []command {
	return []command{
		{"demo", "[--walkthrough]", "run a whole migration on this machine with a sample legacy server (nothing to install)", runDemo},
		{"serve", "--config FILE", "run mailcapture from one configuration file", runServe},
		{"check-config", "--config FILE", "load and validate a configuration, then print it", runCheckConfig},
		{"status", "--config FILE [--json]", "show the migration's progress", runStatus},
		{"logins", "--config FILE [--json]", "list who logged in, over which protocol (the shadow-mode forecast)", runLogins},
		{"accounts", accountsUsage, "list the accounts, or show one (state, progress, folders, logins)", runAccounts},
		{"cutover", "--config FILE NAME [--yes]", "force an account's cut-over now", runCutover},
		{"retire-legacy", retireUsage, "check what would break without the legacy server, then record that it is gone", runRetireLegacy},
		{"addresses", addressesUsage, "show the alias table, how an address resolves, and addresses the table lacks", runAddresses},
		{"export", "--config FILE --maildir DIR [--account NAME]...", "write accounts out as Dovecot-compatible Maildir++", runExport},
		{"queue", queueUsage, "list, retry or drop the relay spool's messages", runQueue},
		{"capture", "--config FILE (--csv FILE | --accounts FILE --master-user NAME ...)", "capture accounts nobody logs into", runCapture},
		{"version", "", "print the version", runVersion},
	}
}

// errUsage marks an error caused by how the command was called (exit 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	env := &environment{reload: reload, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, environ: os.Environ(), isTerminal: isTerminal(os.Stdout),
		canAsk: isTerminal(os.Stdout) && isTerminal(os.Stdin)}
	code := run(ctx, env, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, env *environment, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-h" {
		if len(args) > 1 {
			return run(ctx, env, []string{args[1], "--help"})
		}
		usage(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		switch {
		case err == nil || errors.Is(err, pflag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(env.stderr, "mailcapture %s: %v\n", c.name, err)
			fmt.Fprintf(env.stderr, "run 'mailcapture %s --help' for usage\n", c.name)
			return 2
		default:
			fmt.Fprintf(env.stderr, "mailcapture %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(env.stderr, "mailcapture: unknown command %q\n\n", args[0])
	usage(env.stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "mailcapture moves a domain's mail off a legacy IMAP/POP3 server while people keep using it.")
	fmt.Fprintln(w, "\nUsage: mailcapture COMMAND [flags]\n\nCommands:")
	cmds := commands()
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'mailcapture COMMAND --help' for a command's flags.")
}

// newFlagSet returns a flag set whose --help prints the command's usage.
func newFlagSet(env *environment, name, args, summary string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stdout, "Usage: mailcapture %s %s\n\n%s.\n\nFlags:\n", name, args, upperFirst(summary))
		fs.SetOutput(env.stdout)
		fs.PrintDefaults()
		fs.SetOutput(env.stderr)
	}
	return fs
}

// parse parses args, turning flag errors into usage errors; positional
// arguments are refused.
func parse(fs *pflag.FlagSet, args []string) error {
	if err := parseWithArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

// usageError is a usage error with a message.
func usageError(msg string) error { return fmt.Errorf("%w: %s", errUsage, msg) }

// parseWithArgs is parse, leaving positional arguments in fs.Args().
func parseWithArgs(fs *pflag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard) // errors are reported once, by run
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		fs.Usage()
		return err
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
