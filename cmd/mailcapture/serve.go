package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mailcapture/addresses"
	"mailcapture/capture"
	"mailcapture/config"
	"mailcapture/connlimit"
	"mailcapture/cutover"
	"mailcapture/front"
	"mailcapture/imapstore"
	"mailcapture/labels"
	"mailcapture/legacyclient"
	"mailcapture/managesieve"
	"mailcapture/metrics"
	"mailcapture/pop3"
	"mailcapture/pop3store"
	"mailcapture/relay"
	"mailcapture/retirement"
	"mailcapture/sieve"
	"mailcapture/status"
	"mailcapture/store"
	"mailcapture/vault"
)

// server is everything serve runs.
type server struct {
	cfg config.Config
	log *slog.Logger
	st  *store.Store
	// problems keeps the latest warnings and errors for the status page.
	problems *status.Problems
	// aliasReload asks for the alias table to be read again (SIGHUP).
	aliasReload chan struct{}
	tls         *tls.Config
	sched       *capture.Scheduler
	imap        *front.IMAPFront
	pop3        *pop3.Server
	http        *http.Server
	errc        chan error
	stops       []func(context.Context) error
	// addrs are the listeners' addresses, by configuration key.
	addrs map[string]string
	// cert is the TLS certificate, replaced by a reload.
	cert   atomic.Pointer[tls.Certificate]
	router *front.Router
	queue  *relay.Queue // nil without listen.smtp
	// stopCaptures ends the capture scheduler (the legacy server's
	// retirement).
	stopCaptures context.CancelFunc
	// retirement checks what would break without the legacy server.
	retirement atomic.Pointer[retirement.Cache]
	limiter    *front.LoginLimiter
}

// reload re-reads the configuration and applies what can change while
// running: the TLS certificate, log.level, limits.failed_logins_* and
// legacy.retired, and the alias table is read again. Other changes are
// named as needing a restart.
func (s *server) reload(rl *reloader) {
	log := s.log
	next, err := rl.load()
	if err != nil {
		log.Error("reload: configuration refused; keeping the running one", "err", err)
		return
	}
	var applied []string
	if next.TLS.Cert != "" && s.tls != nil {
		cert, err := tls.LoadX509KeyPair(next.TLS.Cert, next.TLS.Key)
		if err != nil {
			log.Error("reload: tls.cert: keeping the running certificate", "err", err)
		} else {
			s.cert.Store(&cert)
			applied = append(applied, "tls.cert")
		}
	}
	if rl.level != nil {
		rl.level.Set(logLevel(next.Log.Level))
		applied = append(applied, "log.level")
	}
	l := next.Limits
	s.limiter.SetLimits(l.FailedLoginsPerAddress, l.FailedLoginsPerAccount, l.FailedLoginWindow)
	applied = append(applied, "limits.failed_logins_*")
	if next.Legacy.Retired {
		s.retire(context.Background())
		applied = append(applied, "legacy.retired")
	}
	if s.cfg.Addresses.File != "" {
		select {
		case s.aliasReload <- struct{}{}:
		default:
		}
		applied = append(applied, "addresses.file")
	}
	// What else changed needs a restart.
	runtime := func(c config.Config) config.Config {
		c.TLS, c.Log.Level, c.Legacy.Retired = config.TLS{}, "", false
		c.Limits.FailedLoginsPerAddress, c.Limits.FailedLoginsPerAccount, c.Limits.FailedLoginWindow = 0, 0, 0
		return c
	}
	restart := config.Diff(runtime(s.cfg), runtime(next))
	log.Info("configuration reloaded", "applied", strings.Join(applied, ","), "needs_restart", strings.Join(restart, ","))
	if len(restart) > 0 {
		log.Warn("reload: these keys changed but take effect only after a restart", "keys", strings.Join(restart, ","))
	}
}

func runServe(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "serve", "--config FILE", "run mailcapture until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate, log.level, limits.failed_logins_*, legacy.retired and the alias table (addresses.file)")
	path := configFlags(fs)
	cfg, err := parseConfig(env, fs, path, args)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	rl := &reloader{signals: env.reload, level: level, load: func() (config.Config, error) {
		return config.Load(config.Sources{File: *path, Environ: env.environ, Flags: fs})
	}}
	return serveConfig(ctx, newLevelLogger(cfg.Log, env, level), cfg, nil, rl)
}

// modernCipherSuites are the TLS 1.2 suites every listener offers: forward
// secret key exchange and AEAD only (TLS 1.3's are fixed and all modern).
var modernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// reloader re-reads the configuration when signalled (SIGHUP).
type reloader struct {
	signals <-chan struct{}
	load    func() (config.Config, error)
	level   *slog.LevelVar
}

// serveConfig runs mailcapture with cfg until ctx ends. ready, if set,
// receives the listeners' addresses by configuration key once they all
// listen.
func serveConfig(ctx context.Context, log *slog.Logger, cfg config.Config, ready func(addrs map[string]string), rl *reloader) error {
	problems := status.NewProblems(20)
	log = slog.New(problems.Handler(log.Handler()))
	st, err := store.Open(ctx, cfg.DataDir, store.Options{Hash: hashParams(cfg.PasswordHash), Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	log.Info("store open", "data_dir", cfg.DataDir)
	if err := (&cutover.Cutover{Store: st, Log: log}).Recover(ctx); err != nil {
		return err
	}
	s := &server{cfg: cfg, log: log, st: st, problems: problems, errc: make(chan error, 8), addrs: map[string]string{}, aliasReload: make(chan struct{}, 1)}
	if cfg.TLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return fmt.Errorf("tls.cert: %w", err)
		}
		s.cert.Store(&cert)
		// The certificate is looked up at each handshake, so a reload
		// (SIGHUP) takes effect for every listener and STARTTLS at once.
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: modernCipherSuites,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cert.Load(), nil }}
	}
	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	schedDone := make(chan struct{})
	defer stopSched()
	err = s.start(schedCtx, schedDone)
	if err == nil {
		log.Info("mailcapture running", "version", version, "domains", strings.Join(cfg.Domains, ","), "mode", cfg.Mode)
		if ready != nil {
			ready(s.addrs)
		}
		var reloads <-chan struct{}
		if rl != nil {
			reloads = rl.signals
		}
	running:
		for {
			select {
			case <-ctx.Done():
				log.Info("shutting down", "within", cfg.ShutdownTimeout)
				break running
			case err = <-s.errc:
				log.Error("a listener failed; shutting down", "err", err)
				break running
			case <-reloads:
				s.reload(rl)
			}
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	for i := len(s.stops) - 1; i >= 0; i-- {
		if serr := s.stops[i](shutdownCtx); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			log.Warn("a part did not stop cleanly", "err", serr)
		}
	}
	// Capture jobs stop; the batches they were streaming are committed.
	stopSched()
	select {
	case <-schedDone:
	case <-shutdownCtx.Done():
		log.Warn("shutdown: captures did not stop in time", "timeout", cfg.ShutdownTimeout)
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// start opens every configured listener and starts the capture scheduler.
func (s *server) start(schedCtx context.Context, schedDone chan struct{}) error {
	cfg, log := s.cfg, s.log
	m := metrics.New(func(ctx context.Context) (status.Report, error) {
		return status.Collect(ctx, s.st, status.Options{Retirement: s.retirementReport})
	}, log)
	engine := capture.NewEngine(s.st, cfg, log)
	engine.Observer = m.Capture
	s.sched = capture.NewScheduler(engine, cfg, log)
	lim := cfg.Limits
	s.limiter = &front.LoginLimiter{PerAddress: lim.FailedLoginsPerAddress, PerAccount: lim.FailedLoginsPerAccount, Window: lim.FailedLoginWindow}
	router := &front.Router{Store: s.st, Mode: cfg.Mode, Naming: engine.Naming, Log: log, Observer: m.Traffic, Limiter: s.limiter}
	sieveBackend := &front.SieveBackend{Router: router, Store: s.st, Delimiter: cfg.SMTP.RecipientDelimiter,
		Legacy:     legacyclient.Configured(cfg.Legacy.ManageSieve.Address, cfg.Legacy.ManageSieve.TLS, cfg.Legacy),
		MaxScripts: cfg.Sieve.MaxScripts, MaxScriptBytes: cfg.Sieve.MaxScriptBytes}
	s.router = router
	// The recipients' resolver: naming rules, the alias table, accounts.
	dir := &addresses.Directory{Naming: engine.Naming, Domains: cfg.Domains, Store: s.st}
	// What would break without the legacy server, for the status page
	// and the metrics (the legacy mailboxes are looked into only by
	// `mailcapture retire-legacy`).
	s.retirement.Store(&retirement.Cache{TTL: time.Minute, Check: func(ctx context.Context) (retirement.Report, error) {
		return retirement.Check(ctx, s.st, dir, retirement.Options{Now: time.Now(), Outbound: cfg.Outbound.Relay.Address != ""})
	}})
	if path := cfg.Addresses.File; path != "" {
		n, warnings, err := dir.Load(path)
		if err != nil {
			return fmt.Errorf("addresses.file: %w", err)
		}
		for _, w := range warnings {
			log.Warn("addresses.file: a line was ignored", "file", path, "line", w.Line, "problem", w.Msg)
		}
		log.Info("alias table loaded", "file", path, "entries", n)
		watchCtx, stopWatch := context.WithCancel(schedCtx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			dir.Watch(watchCtx, path, 2*time.Second, s.aliasReload, log)
		}()
		s.stops = append(s.stops, func(context.Context) error {
			stopWatch()
			<-watchDone
			return nil
		})
	}
	conns := &connlimit.Limiter{PerAddress: lim.ConnectionsPerAddress, Total: lim.Connections, Refused: m.Traffic.Refused}
	if cfg.Mode != "shadow" {
		router.Scheduler = s.sched
	}
	// Stopped last: the logins of sessions ended by the other stops are
	// written before the store closes.
	s.stops = append(s.stops, func(context.Context) error {
		router.FlushLogins()
		return nil
	}, func(context.Context) error {
		router.StopFollows()
		return nil
	})
	if !cfg.Legacy.Retired {
		router.LegacyCheck = engine.CheckPassword
		router.Follow = func(ctx context.Context, account, password string) {
			res, err := engine.Follow(ctx, account, password)
			switch {
			case err != nil && ctx.Err() != nil:
				// A stop (or the end of the session it followed) cut it
				// short: the next login syncs again.
				log.Debug("follow sync stopped", "account", account, "err", err)
				return
			case err != nil:
				log.Warn("a follow sync of new legacy mail failed; the next login tries again", "account", account, "err", err)
				return
			}
			if res.Added > 0 {
				log.Info("follow sync copied new legacy mail", "account", account, "messages", res.Added)
			}
		}
	}
	inboxSearch := capture.InboxSearch{Endpoint: engine.IMAP, Store: s.st, Naming: engine.Naming}
	if m := cfg.Legacy.Master; m.User != "" {
		password, err := m.Password()
		if err != nil {
			return fmt.Errorf("legacy.master.password_file: %w", err)
		}
		inboxSearch.Master = &legacyclient.MasterLogin{Username: m.User, Password: password, Style: m.Style, Separator: m.Separator}
	}
	if cfg.Vault.KeyFile != "" && cfg.Mode != "shadow" {
		v, err := vault.Load(cfg.Vault.KeyFile)
		if err != nil {
			return fmt.Errorf("vault.key_file: %w", err)
		}
		inboxSearch.Passwords = func(ctx context.Context, account string) (string, bool) {
			creds, err := s.st.Credentials(ctx)
			if err != nil || creds[account] == nil {
				return "", false
			}
			password, err := v.Open(account, creds[account])
			return password, err == nil
		}
		router.Remember = func(account, password string) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.st.SetCredential(ctx, account, v.Seal(account, password)); err != nil {
				log.Warn("the password could not be sealed in the vault", "account", account, "err", err)
			}
		}
		vaultCtx, stopVault := context.WithCancel(schedCtx)
		vaultDone := make(chan struct{})
		go func() {
			defer close(vaultDone)
			for {
				s.fromVault(vaultCtx, v, router)
				select {
				case <-vaultCtx.Done():
					return
				case <-time.After(cfg.Vault.FollowInterval):
				}
			}
		}()
		s.stops = append(s.stops, func(context.Context) error {
			stopVault()
			<-vaultDone
			return nil
		})
	}
	trusted := trustedNetworks(cfg.TrustedNetworks)
	local := imapstore.NewServer(s.st, imapstore.Options{Log: log, IdleTimeout: lim.IMAPIdleTimeout,
		Panicked: func() { m.Traffic.Panicked(labels.IMAP) }})
	s.imap = &front.IMAPFront{Router: router, Local: local, Legacy: engine.IMAP,
		TLSConfig: s.tls, Trusted: trusted, IdleTimeout: lim.IMAPIdleTimeout, Log: log}
	pop3Backend := &front.POP3Backend{Router: router, Local: &pop3store.Backend{Store: s.st}, Legacy: engine.POP3, Log: log}
	s.pop3 = &pop3.Server{Backend: pop3Backend, TLSConfig: s.tls, Hostname: cfg.Hostname, InsecureAuthAllowed: trusted,
		Timeout: lim.POP3IdleTimeout, Limited: m.Traffic.Refused, Log: log, Panicked: func() { m.Traffic.Panicked(labels.POP3) }}
	// The relay queue (with listen.smtp): mail spooled for the legacy
	// server. A cut-over waits for what it is handing over.
	var queue *relay.Queue
	legacy := relay.Legacy{Endpoint: legacyclient.Configured(cfg.Legacy.SMTP.Address, cfg.Legacy.SMTP.TLS, cfg.Legacy),
		Protocol: cfg.Legacy.SMTP.Protocol, Hostname: cfg.Hostname}
	smtpUsed := cfg.Listen.SMTP != "" || cfg.Listen.Submission != "" || cfg.Listen.Submissions != ""
	if smtpUsed {
		queue = &relay.Queue{Store: s.st, Legacy: legacy, Directory: dir, Retired: router.Retired, Lifetime: cfg.SMTP.MessageLifetime, RetryMin: cfg.SMTP.RetryMin, RetryMax: cfg.SMTP.RetryMax,
			Observer: m.Traffic, Log: log}
		if cfg.Legacy.IMAP.Address != "" && (inboxSearch.Master != nil || inboxSearch.Passwords != nil) {
			queue.Checker = inboxSearch
		}
		if r := cfg.Outbound.Relay; r.Address != "" {
			out := relay.Legacy{Endpoint: legacyclient.Configured(r.Address, r.TLS, cfg.Legacy), Protocol: "smtp", Hostname: cfg.Hostname, Username: r.Username}
			if r.Username != "" {
				password, err := r.Password()
				if err != nil {
					return fmt.Errorf("outbound.relay.password_file: %w", err)
				}
				out.Password = password
			}
			queue.Outbound = &out
		}
	}
	// The SMTP front end: its routing also places held mail released
	// after a cut-over (the account's Sieve script).
	var backend *relay.Backend
	var place store.Placer
	if smtpUsed {
		backend = &relay.Backend{Store: s.st, Domains: cfg.Domains, Directory: dir, Retired: router.Retired, Legacy: legacy, Hostname: cfg.Hostname,
			MaxHops: cfg.SMTP.MaxHops, DataTimeout: cfg.SMTP.DataTimeout, Observer: m.Traffic, Spooled: queue.Wake, Log: log,
			Outbound: queue.Outbound != nil,
			Filters:  &relay.Filters{Store: s.st, Delimiter: cfg.SMTP.RecipientDelimiter, Hostname: cfg.Hostname, Log: log}}
		place = backend.PlaceHeld
		queue.Place = place
	}
	var cut *cutover.Cutover
	if cfg.Mode != "shadow" {
		// A converged, verified account is cut over at once.
		cut = &cutover.Cutover{Store: s.st, Sync: engine, IMAP: s.imap, POP3: pop3Backend, Sieve: sieveBackend, Place: place, Log: log}
		if queue != nil {
			cut.Quiesce = queue.Quiesce
		}
		// An account that keeps getting mail is cut over once its passes
		// find no more than a trickle: the cut-over holds the mail and
		// converges and verifies before it switches.
		s.sched.Trickle = 100
		s.sched.OnReady = func(ctx context.Context, account, password string) {
			cut.Run(ctx, account, password)
		}
	}
	s.queue = queue
	// Requests from the admin commands (cutover, retire-legacy), written
	// to the store beside this process, are carried out here.
	adminCtx, stopAdmin := context.WithCancel(schedCtx)
	adminDone := make(chan struct{})
	go func() {
		defer close(adminDone)
		for {
			s.adminRequests(adminCtx, router, cut)
			select {
			case <-adminCtx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	s.stops = append(s.stops, func(context.Context) error {
		stopAdmin()
		<-adminDone
		return nil
	})
	captureCtx, stopCaptures := context.WithCancel(schedCtx)
	s.stopCaptures = stopCaptures
	go func() {
		s.sched.Run(captureCtx)
		close(schedDone)
	}()
	if cfg.Legacy.Retired {
		s.retire(schedCtx)
	}
	const (
		imapRefusal = "* BYE [UNAVAILABLE] too many connections, try again later\r\n"
		pop3Refusal = "-ERR [SYS/TEMP] too many connections, try again later\r\n"
		smtpRefusal = "421 4.7.0 too many connections, try again later\r\n"
	)
	listeners := []struct {
		key, addr string
		implicit  bool
		refusal   string
		serve     func(net.Listener) error
	}{
		{"listen.imap", cfg.Listen.IMAP, false, imapRefusal, s.imap.Serve},
		{"listen.imaps", cfg.Listen.IMAPS, true, "", s.imap.Serve},
		{"listen.pop3", cfg.Listen.POP3, false, pop3Refusal, s.pop3.Serve},
		{"listen.pop3s", cfg.Listen.POP3S, true, "", s.pop3.Serve},
	}
	imapUsed, pop3Used := false, false
	for _, l := range listeners {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s %s: %w", l.key, l.addr, err)
		}
		ln = connlimit.Listen(ln, conns, l.refusal)
		if l.implicit {
			ln = tls.NewListener(ln, s.tls)
		}
		imapUsed = imapUsed || strings.HasPrefix(l.key, "listen.imap")
		pop3Used = pop3Used || strings.HasPrefix(l.key, "listen.pop3")
		go func() { s.errc <- l.serve(ln) }()
		s.addrs[l.key] = ln.Addr().String()
		log.Info("listening", "key", l.key, "addr", ln.Addr().String())
	}
	if imapUsed {
		s.stops = append(s.stops, s.imap.Shutdown)
	}
	if addr := cfg.Listen.ManageSieve; addr != "" {
		ms := &managesieve.Server{Backend: sieveBackend, TLSConfig: s.tls, Trusted: trusted, Extensions: sieve.Extensions(),
			MaxScriptBytes: cfg.Sieve.MaxScriptBytes, Log: log}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen.managesieve %s: %w", addr, err)
		}
		ln = connlimit.Listen(ln, conns, `BYE (TRYLATER) "too many connections, try again later"`+"\r\n")
		go func() { s.errc <- ms.Serve(ln) }()
		s.stops = append(s.stops, ms.Shutdown)
		s.addrs["listen.managesieve"] = ln.Addr().String()
		log.Info("listening", "key", "listen.managesieve", "addr", ln.Addr().String())
	}
	if pop3Used {
		s.stops = append(s.stops, s.pop3.Shutdown)
	}
	if smtpUsed {
		newServer := func(b smtp.Backend) *smtp.Server {
			srv := smtp.NewServer(b)
			srv.Domain = cfg.Hostname
			srv.TLSConfig = s.tls
			srv.ReadTimeout, srv.WriteTimeout = cfg.SMTP.CommandTimeout, time.Minute
			srv.MaxMessageBytes, srv.MaxRecipients = cfg.SMTP.MaxMessageBytes, cfg.SMTP.MaxRecipients
			srv.EnableSMTPUTF8 = true
			return srv
		}
		if cfg.Listen.Submission != "" || cfg.Listen.Submissions != "" {
			sub := &relay.SubmissionBackend{MX: backend, Router: router,
				Legacy:        legacyclient.Configured(cfg.Legacy.Submission.Address, cfg.Legacy.Submission.TLS, cfg.Legacy),
				Outbound:      cfg.Outbound.Relay.Address != "",
				StartsCapture: cfg.Submission.StartsCapture && cfg.Mode != "shadow", MaxPerHour: cfg.Submission.MaxMessagesPerHour,
				Trusted: trusted, Observer: m.Traffic, Log: log}
			if !cfg.Legacy.Retired {
				sub.CheckPassword = engine.CheckPassword
			}
			srv := newServer(sub)
			// AUTH is offered per session: after TLS, or to trusted networks.
			srv.AllowInsecureAuth = true
			for _, l := range []struct {
				key, addr string
				implicit  bool
			}{{"listen.submission", cfg.Listen.Submission, false}, {"listen.submissions", cfg.Listen.Submissions, true}} {
				if l.addr == "" {
					continue
				}
				ln, err := net.Listen("tcp", l.addr)
				if err != nil {
					return fmt.Errorf("%s %s: %w", l.key, l.addr, err)
				}
				ln = backend.CountRefusals(connlimit.Listen(ln, conns, smtpRefusal))
				if l.implicit {
					ln = tls.NewListener(ln, s.tls)
				}
				go func() { s.errc <- srv.Serve(ln) }()
				s.addrs[l.key] = ln.Addr().String()
				log.Info("listening", "key", l.key, "addr", ln.Addr().String())
			}
			// Stop: no new connections, transactions in progress finish,
			// idle sessions get 421 (the MX backend's Drain ends both
			// front ends' sessions).
			s.stops = append(s.stops, func(ctx context.Context) error {
				done := make(chan error, 1)
				go func() { done <- srv.Shutdown(ctx) }()
				backend.Drain(ctx)
				return <-done
			})
		}
		// The MX listener opens last: its address in the log says every
		// listener is up.
		if cfg.Listen.SMTP != "" {
			srv := newServer(backend)
			ln, err := net.Listen("tcp", cfg.Listen.SMTP)
			if err != nil {
				return fmt.Errorf("listen.smtp %s: %w", cfg.Listen.SMTP, err)
			}
			ln = backend.CountRefusals(connlimit.Listen(ln, conns, smtpRefusal))
			go func() { s.errc <- srv.Serve(ln) }()
			// Stop: no new connections, transactions in progress finish,
			// idle sessions get 421.
			s.stops = append(s.stops, func(ctx context.Context) error {
				done := make(chan error, 1)
				go func() { done <- srv.Shutdown(ctx) }()
				backend.Drain(ctx)
				return <-done
			})
			s.addrs["listen.smtp"] = ln.Addr().String()
			log.Info("listening", "key", "listen.smtp", "addr", ln.Addr().String())
		}
		queueCtx, stopQueue := context.WithCancel(context.WithoutCancel(schedCtx))
		queueDone := make(chan struct{})
		go func() {
			queue.Run(queueCtx)
			close(queueDone)
		}()
		s.stops = append(s.stops, func(context.Context) error {
			stopQueue()
			<-queueDone
			return nil
		})
	}
	if cfg.Listen.HTTP != "" {
		ln, err := net.Listen("tcp", cfg.Listen.HTTP)
		if err != nil {
			return fmt.Errorf("listen.http %s: %w", cfg.Listen.HTTP, err)
		}
		detail := func(ctx context.Context) (status.Report, error) {
			r, err := status.Collect(ctx, s.st, status.Options{PerAccount: true, Retirement: s.retirementReport})
			r.Problems = s.problems.Recent()
			if cfg.Listen.Submission != "" || cfg.Listen.Submissions != "" {
				r.Submissions = m.Traffic.Submissions()
			}
			return r, err
		}
		s.http = &http.Server{
			Handler:           metrics.Handler(m, detail, readinessChecks(cfg, s.st)),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() {
			if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				s.errc <- err
			}
		}()
		s.stops = append(s.stops, s.http.Shutdown)
		s.addrs["listen.http"] = ln.Addr().String()
		log.Info("http listening", "addr", ln.Addr().String())
	}
	return nil
}

// fromVault uses the sealed passwords: captures of accounts still being
// captured are (re)submitted, captured accounts are followed (until the
// legacy server is retired).
func (s *server) fromVault(ctx context.Context, v *vault.Vault, router *front.Router) {
	if router.Retired() {
		return
	}
	creds, err := s.st.Credentials(ctx)
	if err != nil {
		s.log.Warn("the vault could not be read", "err", err)
		return
	}
	for name, sealed := range creds {
		password, err := v.Open(name, sealed)
		if err != nil {
			s.log.Warn("vault: a sealed password does not open (another key?)", "account", name)
			continue
		}
		acct, err := s.st.Account(ctx, name)
		if err != nil {
			continue
		}
		switch acct.State {
		case store.StateCapturing:
			if _, running := s.sched.Status(name); !running {
				s.log.Info("vault: capture resumed without a login", "account", name)
			}
			s.sched.Submit(name, password, false)
		case store.StateCaptured:
			router.LocalLoginOK(name, password) // a follow sync, unless retired or one runs
		}
	}
}

// adminRequests carries out what `mailcapture cutover` and
// `mailcapture retire-legacy` asked for.
func (s *server) adminRequests(ctx context.Context, router *front.Router, cut *cutover.Cutover) {
	if retired, _, err := s.st.LegacyRetired(ctx); err == nil && retired {
		s.retire(ctx)
	}
	if cut == nil {
		names, _ := s.st.CutoverRequests(ctx)
		for _, name := range names {
			s.log.Warn("forced cut-over asked for in shadow mode: ignored", "account", name)
			s.st.ClearCutoverRequest(ctx, name)
		}
		return
	}
	cut.RunRequested(ctx, func(account string) string {
		password, _ := s.sched.Password(account)
		return password
	})
}

// retirementReport is what would break without the legacy server, for
// the status report.
func (s *server) retirementReport(ctx context.Context) (retirement.Report, error) {
	c := s.retirement.Load()
	if c == nil {
		return retirement.Report{}, nil
	}
	return c.Report(ctx)
}

// retire puts the legacy server's retirement in force (once): logins,
// follow syncs and the SMTP front end stop using it, and the mail spooled
// for it is resolved again at once instead of waiting for its next try.
func (s *server) retire(ctx context.Context) {
	if s.router.Retired() {
		return
	}
	s.router.SetRetired()
	if s.stopCaptures != nil {
		s.stopCaptures() // no capture reads the legacy server any more
	}
	if s.queue == nil {
		return
	}
	if n, err := s.st.RequestRetry(ctx, nil); err != nil {
		s.log.Error("the spool could not be made due after the retirement; it is resolved again at its next tries", "err", err)
	} else if n > 0 {
		s.log.Info("mail spooled for the retired legacy server is resolved again now", "messages", n)
	}
	s.queue.Wake()
}

// trustedNetworks returns whether an address is in one of the networks
// (validated by config).
func trustedNetworks(cidrs []string) func(net.Addr) bool {
	var nets []*net.IPNet
	for _, c := range cidrs {
		if _, n, err := net.ParseCIDR(c); err == nil {
			nets = append(nets, n)
		}
	}
	return func(a net.Addr) bool {
		tcp, ok := a.(*net.TCPAddr)
		if !ok {
			return false
		}
		for _, n := range nets {
			if n.Contains(tcp.IP) {
				return true
			}
		}
		return false
	}
}
