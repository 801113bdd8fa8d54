package imapcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Credentials is one user's login.
type Credentials struct{ Name, Password string }

// Config describes a run.
type Config struct {
	// Addr is the server's address (IMAP, no TLS).
	Addr string
	// Users are the accounts the clients share; each has Mailboxes.
	Users []Credentials
	// Clients is how many sessions run at once (spread over the users).
	Clients int
	// Duration is how long the clients run.
	Duration time.Duration
	// Seed makes the command mix repeatable.
	Seed uint64
	// Mailboxes are created (if missing) and emptied first; the first is
	// INBOX.
	Mailboxes []string
	// Messages is how many messages each mailbox starts with.
	Messages int
	// Reconnects lets clients log out and in again now and then; off,
	// sessions are kept open (for measuring speed).
	Reconnects bool
	// Timeout bounds each response. Default 30s.
	Timeout time.Duration
}

func (c *Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 30 * time.Second
	}
	return c.Timeout
}

// Run prepares the users' mailboxes and runs the clients for the
// configured time; the report lists every inconsistency found.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if len(cfg.Mailboxes) == 0 {
		cfg.Mailboxes = []string{"INBOX", "box1", "box2"}
	}
	reg := newRegistry()
	for i, u := range cfg.Users {
		s := &session{id: -1 - i, user: u, cfg: &cfg, reg: reg, rnd: rand.New(rand.NewPCG(cfg.Seed, uint64(i)))}
		if err := s.prepare(ctx); err != nil {
			return Report{}, fmt.Errorf("prepare %s: %w", u.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		s := &session{id: i, user: cfg.Users[i%len(cfg.Users)], cfg: &cfg, reg: reg, rnd: rand.New(rand.NewPCG(cfg.Seed, uint64(1000+i)))}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx)
		}()
	}
	wg.Wait()
	return reg.report(time.Since(start)), nil
}

// prepare creates the mailboxes, empties them and appends fresh
// messages, so that the registry knows every message there is.
func (s *session) prepare(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	defer s.w.close()
	for _, mb := range s.cfg.Mailboxes {
		if mb != "INBOX" {
			s.run(ctx, "CREATE "+mb, "")
		}
		if err := s.selectMailbox(ctx, mb, false); err != nil {
			return err
		}
		if len(s.sel.uids) > 0 {
			s.run(ctx, `STORE 1:* +FLAGS.SILENT (\Deleted)`, "")
			s.run(ctx, "EXPUNGE", "")
		}
		for i := 0; i < s.cfg.Messages; i++ {
			if err := s.appendTo(ctx, mb); err != nil {
				return err
			}
		}
		s.run(ctx, "UNSELECT", "")
		s.sel = nil
	}
	_, _, err := s.run(ctx, "LOGOUT", "")
	return err
}

// loop runs random commands until ctx ends, reconnecting when the
// session's model was lost.
func (s *session) loop(ctx context.Context) {
	for ctx.Err() == nil {
		if err := s.connect(ctx); err != nil {
			if ctx.Err() == nil {
				s.errorf("disconnected", "connect: %v", err)
			}
			return
		}
		err := s.work(ctx)
		s.w.close()
		if err != nil && !errors.Is(err, errCheck) && ctx.Err() == nil {
			s.errorf("disconnected", "%v", err)
		}
	}
}

// work runs commands on one connection.
func (s *session) work(ctx context.Context) error {
	for ctx.Err() == nil {
		if s.sel == nil || s.rnd.IntN(40) == 0 {
			mb := s.cfg.Mailboxes[s.rnd.IntN(len(s.cfg.Mailboxes))]
			if err := s.selectMailbox(ctx, mb, s.rnd.IntN(6) == 0); err != nil {
				return err
			}
			if s.sel == nil {
				continue
			}
			if len(s.sel.uids) > 0 {
				if _, _, err := s.run(ctx, "FETCH 1:* (UID FLAGS)", ""); err != nil {
					return err
				}
			}
			continue
		}
		if s.cfg.Reconnects && s.rnd.IntN(150) == 0 {
			_, _, err := s.run(ctx, "LOGOUT", "")
			return err
		}
		if err := s.step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// keywords the clients use.
var keywords = []string{"$kw1", "$kw2", "$Label3", "Work", "$Junk"}

var systemFlags = []string{`\Seen`, `\Flagged`, `\Answered`, `\Draft`}

// step runs one random command on the selected mailbox.
func (s *session) step(ctx context.Context) error {
	sel := s.sel
	n := len(sel.uids)
	rangeArg := func() string {
		if n == 0 {
			return ""
		}
		a := 1 + s.rnd.IntN(n)
		b := min(n, a+s.rnd.IntN(10))
		if a == b {
			return fmt.Sprint(a)
		}
		return fmt.Sprintf("%d:%d", a, b)
	}
	uidRange := func() string {
		var known []uint32
		for _, u := range sel.uids {
			if u != 0 {
				known = append(known, u)
			}
		}
		if len(known) == 0 {
			return "1:*"
		}
		a := known[s.rnd.IntN(len(known))]
		return fmt.Sprintf("%d:%d", a, a+uint32(s.rnd.IntN(20)))
	}
	flag := func() string {
		if s.rnd.IntN(2) == 0 {
			return keywords[s.rnd.IntN(len(keywords))]
		}
		return systemFlags[s.rnd.IntN(len(systemFlags))]
	}
	var err error
	switch c := s.rnd.IntN(100); {
	case c < 22 && n > 0:
		items := []string{"(UID FLAGS)", "(UID FLAGS ENVELOPE)", "(UID BODY.PEEK[])", "(UID BODYSTRUCTURE)", "(FLAGS RFC822.SIZE INTERNALDATE)", "(UID BODY.PEEK[HEADER] BODY.PEEK[TEXT]<0.100>)"}
		if s.rnd.IntN(4) == 0 {
			_, _, err = s.run(ctx, "UID FETCH "+uidRange()+" "+items[s.rnd.IntN(len(items))], "")
		} else {
			_, _, err = s.run(ctx, "FETCH "+rangeArg()+" "+items[s.rnd.IntN(len(items))], "")
		}
	case c < 40 && n > 0 && !sel.readOnly:
		ops := []string{"+FLAGS", "-FLAGS", "+FLAGS.SILENT", "-FLAGS.SILENT", "FLAGS"}
		op := ops[s.rnd.IntN(len(ops))]
		flags := flag()
		if op == "FLAGS" {
			flags = flag() + " " + flag()
		}
		if s.rnd.IntN(4) == 0 {
			_, _, err = s.run(ctx, "UID STORE "+uidRange()+" "+op+" ("+flags+")", "")
		} else {
			_, _, err = s.run(ctx, "STORE "+rangeArg()+" "+op+" ("+flags+")", "")
		}
	case c < 48 && n > 0 && !sel.readOnly:
		_, _, err = s.run(ctx, "STORE "+rangeArg()+` +FLAGS.SILENT (\Deleted)`, "")
		if err == nil {
			if s.rnd.IntN(3) == 0 {
				_, _, err = s.run(ctx, "UID EXPUNGE "+uidRange(), "")
			} else {
				_, _, err = s.run(ctx, "EXPUNGE", "")
			}
		}
	case c < 58:
		if n < 150 {
			err = s.appendTo(ctx, s.cfg.Mailboxes[s.rnd.IntN(len(s.cfg.Mailboxes))])
		}
	case c < 64 && n > 0:
		dest := s.cfg.Mailboxes[s.rnd.IntN(len(s.cfg.Mailboxes))]
		verb := "COPY"
		if !sel.readOnly && s.rnd.IntN(2) == 0 {
			verb = "MOVE"
		}
		var st string
		var tagged *response
		st, tagged, err = s.run(ctx, verb+" "+rangeArg()+" "+dest, "")
		if err == nil && st == "NO" && !strings.Contains(tagged.code(), "EXPUNGEISSUED") {
			s.errorf("NO", "%s: %q", verb, tagged.raw)
		}
	case c < 70:
		mb := s.cfg.Mailboxes[s.rnd.IntN(len(s.cfg.Mailboxes))]
		_, _, err = s.run(ctx, "STATUS "+mb+" (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)", "")
	case c < 80:
		keys := []string{"ALL", "FLAGGED", "UNSEEN", "KEYWORD " + keywords[s.rnd.IntN(len(keywords))], "NEW", "LARGER 2000", "OR SEEN DRAFT", "NOT DELETED"}
		k := keys[s.rnd.IntN(len(keys))]
		if s.rnd.IntN(2) == 0 {
			_, _, err = s.run(ctx, "UID SEARCH "+k, "")
		} else {
			_, _, err = s.run(ctx, "SEARCH "+k, "")
		}
	case c < 85:
		err = s.idle(ctx)
	default:
		_, _, err = s.run(ctx, "NOOP", "")
	}
	return err
}

// appendTo appends a new message, registered before it is sent.
func (s *session) appendTo(ctx context.Context, mailbox string) error {
	s.appended++
	id := fmt.Sprintf("<%s.%d.%d.%d@check.example>", strings.ReplaceAll(s.user.Name, "@", "."), s.id+100, s.appended, s.rnd.Uint32())
	body := makeMessage(s.rnd, id)
	s.reg.appended(id, []byte(body))
	command := "APPEND " + mailbox
	if s.rnd.IntN(3) == 0 {
		command += " (" + keywords[s.rnd.IntN(len(keywords))] + ` \Seen)`
	}
	st, tagged, err := s.run(ctx, command, body)
	if err == nil && st != "OK" {
		s.errorf("APPEND", "%q", tagged.raw)
	}
	return err
}

// makeMessage builds a message of a few hundred bytes to about 20 KB.
func makeMessage(rnd *rand.Rand, id string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Message-ID: %s\r\nFrom: Checker <checker@example.org>\r\nTo: user@example.org\r\nSubject: check %d\r\nDate: Mon, 2 Jan 2006 15:04:05 -0700\r\n", id, rnd.IntN(1000))
	if rnd.IntN(2) == 0 {
		b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n")
		writeLines(&b, rnd)
		b.WriteString("\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n--b--\r\n")
		return b.String()
	}
	b.WriteString("\r\n")
	writeLines(&b, rnd)
	return b.String()
}

func writeLines(b *strings.Builder, rnd *rand.Rand) {
	for i := rnd.IntN(250); i >= 0; i-- {
		fmt.Fprintf(b, "line %d of the body, some text to make it longer %d\r\n", i, rnd.Uint64())
	}
}

// idle runs IDLE for a moment, taking whatever updates come.
func (s *session) idle(ctx context.Context) error {
	s.cmd = "IDLE"
	tag := s.w.nextTag()
	start := time.Now()
	if err := s.w.write(tag + " IDLE\r\n"); err != nil {
		s.errorf("disconnected", "IDLE: %v", err)
		return errCheck
	}
	r, err := s.w.read()
	if err != nil || r.tag != "+" {
		if err == nil && r.tag == "*" {
			// Updates may come before the continuation.
			for err == nil && r.tag == "*" {
				if uerr := s.untagged(r); uerr != nil {
					return uerr
				}
				r, err = s.w.read()
			}
		}
		if err != nil || r.tag != "+" {
			s.errorf("IDLE", "no continuation: %v", err)
			return errCheck
		}
	}
	deadline := time.Now().Add(time.Duration(50+s.rnd.IntN(200)) * time.Millisecond)
	for time.Now().Before(deadline) {
		// Wait for a response to start (Peek consumes nothing if time
		// runs out), then read it whole.
		s.w.c.SetReadDeadline(deadline)
		if _, err := s.w.br.Peek(1); err != nil {
			if isTimeout(err) {
				break
			}
			s.errorf("disconnected", "IDLE: %v", err)
			return errCheck
		}
		r, err := s.w.read()
		if err != nil {
			s.errorf("disconnected", "IDLE: %v", err)
			return errCheck
		}
		if err := s.untagged(r); err != nil {
			return err
		}
	}
	if err := s.w.write("DONE\r\n"); err != nil {
		return errCheck
	}
	for {
		r, err := s.w.read()
		if err != nil {
			s.errorf("disconnected", "after IDLE: %v", err)
			return errCheck
		}
		if r.tag == tag {
			s.reg.timed("IDLE", time.Since(start))
			if r.kind() != "OK" {
				s.errorf("IDLE", "%q", r.raw)
			}
			return nil
		}
		if err := s.untagged(r); err != nil {
			return err
		}
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
