package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"mailcapture/config"
	"mailcapture/demo"
	"mailcapture/status"
	"mailcapture/store"
)

// demoDomain is the sample legacy server's mail domain.
const demoDomain = "demo.example"

func runDemo(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "demo", "[--walkthrough] [--messages N] [--log-level LEVEL]",
		"run a whole migration on this machine, with nothing installed: a sample legacy server in memory (IMAP, POP3, LMTP) with a few accounts and mail, and mailcapture in front of it on free loopback ports; --walkthrough drives it and reports each step")
	walkthrough := fs.Bool("walkthrough", false, "drive the demo: relay, login, capture, cut-over, local delivery; then exit")
	perAccount := fs.Int("messages", 800, "messages per sample account")
	level := fs.String("log-level", "warn", "mailcapture's log level on standard error: debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	lvl, ok := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[*level]
	if !ok {
		return usageError(fmt.Sprintf("--log-level: %q is not one of debug, info, warn, error", *level))
	}
	if *perAccount < 1 || *perAccount > 100000 {
		return usageError("--messages: between 1 and 100000")
	}
	log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: lvl}))
	var accounts []demo.Account
	for _, name := range []string{"alice", "bob", "carol", "dave"} {
		accounts = append(accounts, demo.Account{Name: name + "@" + demoDomain, Password: name + "-secret"})
	}
	legacy, err := demo.StartLegacy(accounts, *perAccount, log)
	if err != nil {
		return err
	}
	defer legacy.Close()
	dir, err := os.MkdirTemp("", "mailcapture-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Hostname = "mx." + demoDomain
	cfg.Domains = []string{demoDomain}
	cfg.Legacy.IMAP = config.Endpoint{Address: legacy.IMAPAddr, TLS: "none"}
	cfg.Legacy.POP3 = config.Endpoint{Address: legacy.POP3Addr, TLS: "none"}
	cfg.Legacy.SMTP = config.SMTPEndpoint{Address: legacy.LMTPAddr, TLS: "none", Protocol: "lmtp"}
	cfg.Legacy.Timeout = 30 * time.Second
	cfg.Listen = config.Listen{IMAP: "127.0.0.1:0", POP3: "127.0.0.1:0", SMTP: "127.0.0.1:0", HTTP: "127.0.0.1:0"}
	cfg.PasswordHash.MemoryKiB = 16 * 1024
	if err := cfg.Validate(); err != nil {
		return err
	}

	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan map[string]string, 1)
	served := make(chan error, 1)
	go func() { served <- serveConfig(serveCtx, log, cfg, func(a map[string]string) { ready <- a }, nil) }()
	var addrs map[string]string
	select {
	case addrs = <-ready:
	case err := <-served:
		return fmt.Errorf("mailcapture did not start: %w", err)
	}
	out := env.stdout
	fmt.Fprintf(out, "mailcapture demo: a sample legacy server for %s with %d accounts of about %d messages, and mailcapture in front of it.\n\n",
		demoDomain, len(accounts), *perAccount)
	fmt.Fprintf(out, "  IMAP  %s   (STARTTLS not offered in the demo; plaintext is allowed from loopback)\n  POP3  %s\n  SMTP  %s\n  status page  http://%s/status   metrics  http://%s/metrics\n\n",
		addrs["listen.imap"], addrs["listen.pop3"], addrs["listen.smtp"], addrs["listen.http"], addrs["listen.http"])
	fmt.Fprintln(out, "  accounts (user / password):")
	for _, a := range accounts {
		fmt.Fprintf(out, "    %-22s %s\n", a.Name, a.Password)
	}
	fmt.Fprintf(out, "  the legacy server itself: IMAP %s, POP3 %s, LMTP %s\n\n", legacy.IMAPAddr, legacy.POP3Addr, legacy.LMTPAddr)
	if *walkthrough {
		err := runWalkthrough(ctx, out, cfg, addrs, legacy, accounts)
		stop()
		if serr := <-served; err == nil {
			err = serr
		}
		return err
	}
	fmt.Fprintf(out, "Try: log in with any IMAP or POP3 client (the first login starts the account's capture), send mail with\n"+
		"  swaks --server %s --to %s\nand watch http://%s/status. Ctrl-C ends the demo and removes its data.\n",
		addrs["listen.smtp"], accounts[1].Name, addrs["listen.http"])
	select {
	case <-ctx.Done():
		stop()
		return <-served
	case err := <-served:
		return err
	}
}

// runWalkthrough drives the demo step by step and reports each outcome.
func runWalkthrough(ctx context.Context, out io.Writer, cfg config.Config, addrs map[string]string, legacy *demo.Legacy, accounts []demo.Account) error {
	alice, bob := accounts[0], accounts[1]
	step := func(n int, what string) { fmt.Fprintf(out, "%d. %s\n", n, what) }
	done := func(format string, args ...any) { fmt.Fprintf(out, "   ok: "+format+"\n", args...) }

	step(1, "Mail for "+bob.Name+", not captured, is relayed to the legacy server.")
	before, err := countInbox(legacy.IMAPAddr, bob)
	if err != nil {
		return err
	}
	if err := sendDemoMail(addrs["listen.smtp"], bob.Name, "<walkthrough-1@demo>"); err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	if err := waitUntil(ctx, 30*time.Second, func() (bool, error) {
		n, err := countInbox(legacy.IMAPAddr, bob)
		return n == before+1, err
	}); err != nil {
		return fmt.Errorf("step 1: the message did not reach the legacy INBOX: %w", err)
	}
	done("250 from mailcapture; the legacy INBOX went from %d to %d messages", before, before+1)

	step(2, alice.Name+" logs in over IMAP through mailcapture: checked at and served by the legacy server; the capture starts.")
	legacyCount, err := countInbox(legacy.IMAPAddr, alice)
	if err != nil {
		return err
	}
	n, err := countInbox(addrs["listen.imap"], alice)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if n != legacyCount {
		return fmt.Errorf("step 2: INBOX has %d messages through mailcapture, %d on the legacy server", n, legacyCount)
	}
	done("logged in; INBOX has %d messages, as on the legacy server (%d)", n, legacyCount)

	step(3, "The capture copies every folder, verifies the copy and cuts the account over.")
	st, err := store.Open(ctx, cfg.DataDir, store.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	last := ""
	err = waitUntil(ctx, 5*time.Minute, func() (bool, error) {
		acct, err := st.Account(ctx, alice.Name)
		if err != nil {
			return false, nil
		}
		p, err := st.AccountProgress(ctx, acct.ID)
		if err != nil {
			return false, err
		}
		line := fmt.Sprintf("   %s: %d of %d messages copied", acct.State, p.Messages, acct.LegacyMessages)
		if line != last {
			fmt.Fprintln(out, line)
			last = line
		}
		return acct.State == store.StateCaptured, nil
	})
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	done("captured and cut over in %.1fs", time.Since(start).Seconds())

	step(4, alice.Name+" logs in again: now served from mailcapture's store, with the same UIDs and bytes.")
	if err := compareInboxes(legacy.IMAPAddr, addrs["listen.imap"], alice); err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	done("INBOX identical (UIDVALIDITY, UIDs, flags, bytes) between the legacy server and mailcapture")

	step(5, "Mail for "+alice.Name+" is now delivered into mailcapture's store; the legacy server gets nothing.")
	localBefore, err := countInbox(addrs["listen.imap"], alice)
	if err != nil {
		return err
	}
	legacyBefore, err := countInbox(legacy.IMAPAddr, alice)
	if err != nil {
		return err
	}
	if err := sendDemoMail(addrs["listen.smtp"], alice.Name, "<walkthrough-5@demo>"); err != nil {
		return fmt.Errorf("step 5: %w", err)
	}
	localAfter, err := countInbox(addrs["listen.imap"], alice)
	if err != nil {
		return err
	}
	legacyAfter, err := countInbox(legacy.IMAPAddr, alice)
	if err != nil {
		return err
	}
	if localAfter != localBefore+1 || legacyAfter != legacyBefore {
		return fmt.Errorf("step 5: local INBOX %d -> %d, legacy INBOX %d -> %d", localBefore, localAfter, legacyBefore, legacyAfter)
	}
	done("local INBOX %d -> %d messages, legacy INBOX unchanged at %d", localBefore, localAfter, legacyAfter)

	r, err := status.Collect(ctx, st, status.Options{})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nWhere the migration stands:")
	if err := r.WriteText(out, false); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nwalkthrough done")
	return nil
}

// waitUntil polls cond every 100 ms until it holds, fails, or limit or ctx
// ends.
func waitUntil(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func sendDemoMail(addr, to, messageID string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("walkthrough.example.net"); err != nil {
		return err
	}
	body := fmt.Sprintf("From: Walkthrough <walk@example.net>\r\nTo: %s\r\nSubject: hello from the walkthrough\r\nMessage-ID: %s\r\nDate: %s\r\n\r\nDelivered during the demo.\r\n",
		to, messageID, time.Now().Format(time.RFC1123Z))
	if err := c.SendMail("walk@example.net", []string{to}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

// flagSet is a canonical spelling of a flag list (order does not matter).
func flagSet(flags []imap.Flag) string {
	var s []string
	for _, f := range flags {
		s = append(s, strings.ToLower(string(f)))
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

func demoLogin(addr string, a demo.Account) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(a.Name, a.Password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s at %s: %w", a.Name, addr, err)
	}
	return c, nil
}

func countInbox(addr string, a demo.Account) (int, error) {
	c, err := demoLogin(addr, a)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return 0, err
	}
	c.Logout().Wait()
	return int(sel.NumMessages), nil
}

// compareInboxes reads INBOX from both servers and compares UIDVALIDITY,
// UIDs, flags and bytes.
func compareInboxes(legacyAddr, localAddr string, a demo.Account) error {
	read := func(addr string) (uint32, []*imapclient.FetchMessageBuffer, error) {
		c, err := demoLogin(addr, a)
		if err != nil {
			return 0, nil, err
		}
		defer c.Close()
		sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil || sel.NumMessages == 0 {
			return 0, nil, err
		}
		var all imap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		return sel.UIDValidity, msgs, err
	}
	lv, legacyMsgs, err := read(legacyAddr)
	if err != nil {
		return err
	}
	mv, localMsgs, err := read(localAddr)
	if err != nil {
		return err
	}
	if lv != mv || len(legacyMsgs) != len(localMsgs) {
		return fmt.Errorf("UIDVALIDITY %d vs %d, %d vs %d messages", lv, mv, len(legacyMsgs), len(localMsgs))
	}
	for i := range legacyMsgs {
		l, m := legacyMsgs[i], localMsgs[i]
		switch {
		case l.UID != m.UID:
			return fmt.Errorf("message %d: UID %d on the legacy server, %d here", i+1, l.UID, m.UID)
		case flagSet(l.Flags) != flagSet(m.Flags):
			return fmt.Errorf("message %d (UID %d): flags %v on the legacy server, %v here", i+1, l.UID, l.Flags, m.Flags)
		case string(l.BodySection[0].Bytes) != string(m.BodySection[0].Bytes):
			return fmt.Errorf("message %d (UID %d): bytes differ", i+1, l.UID)
		}
	}
	return nil
}
