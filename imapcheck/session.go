package imapcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// selected is a client's model of its selected mailbox, built only from
// the server's responses.
type selected struct {
	name        string
	uidvalidity uint32
	readOnly    bool
	// uids[n-1] is the UID of message n; 0 until a response names it.
	uids []uint32
	// keywords were announced by the last FLAGS.
	keywords map[string]bool
}

// session is one client: a connection and its model.
type session struct {
	id   int
	user Credentials
	cfg  *Config
	reg  *registry
	rnd  *rand.Rand
	w    *wireConn
	sel  *selected
	// appended counts this session's APPENDs (for unique Message-IDs).
	appended int
	// cmd is the command in progress (for the EXPUNGE rule).
	cmd string
}

// errCheck marks a session that cannot go on (its model is lost); the
// error was recorded.
var errCheck = errors.New("check failed")

func (s *session) errorf(kind, format string, args ...any) {
	s.reg.errorf(kind, "session %d (%s, %s): %s", s.id, s.user.Name, s.cmd, fmt.Sprintf(format, args...))
}

// connect logs in.
func (s *session) connect(ctx context.Context) error {
	w, err := dial(ctx, s.cfg.Addr, s.cfg.timeout())
	if err != nil {
		return err
	}
	s.w, s.sel = w, nil
	greeting, err := w.read()
	if err != nil {
		w.close()
		return err
	}
	if k := greeting.kind(); k != "OK" && k != "PREAUTH" {
		w.close()
		return fmt.Errorf("greeting %q", greeting.raw)
	}
	if greeting.kind() == "PREAUTH" {
		return nil
	}
	st, tagged, err := s.run(ctx, fmt.Sprintf("LOGIN %s %s", quote(s.user.Name), quote(s.user.Password)), "")
	if err != nil {
		return err
	}
	if st != "OK" {
		return fmt.Errorf("login: %s", tagged.raw)
	}
	return nil
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// run sends one command (literal, if any, sent non-synchronising) and
// reads its responses, each checked against the model, up to its tagged
// answer; it returns the answer's status.
func (s *session) run(ctx context.Context, command, literal string) (string, *response, error) {
	name := strings.ToUpper(strings.Fields(command)[0])
	if name == "UID" {
		name += " " + strings.ToUpper(strings.Fields(command)[1])
	}
	s.cmd = name
	tag := s.w.nextTag()
	line := tag + " " + command
	if literal != "" {
		line += fmt.Sprintf(" {%d+}\r\n%s", len(literal), literal)
	}
	start := time.Now()
	if err := s.w.write(line + "\r\n"); err != nil {
		s.errorf("disconnected", "writing: %v", err)
		return "", nil, errCheck
	}
	for {
		r, err := s.w.read()
		if err != nil {
			s.errorf("disconnected", "reading: %v", err)
			return "", nil, errCheck
		}
		if r.tag == tag {
			s.reg.timed(name, time.Since(start))
			st := r.kind()
			if strings.Contains(r.code(), "SERVERBUG") {
				s.errorf("SERVERBUG", "%q", r.raw)
			}
			if st == "BAD" {
				s.errorf("BAD", "%s: %q", command[:min(len(command), 80)], r.raw)
			}
			return st, r, nil
		}
		if r.tag != "*" {
			s.errorf("protocol", "unexpected %q", r.raw)
			return "", nil, errCheck
		}
		if err := s.untagged(r); err != nil {
			return "", nil, err
		}
	}
}

// untagged applies and checks one untagged response.
func (s *session) untagged(r *response) error {
	switch r.kind() {
	case "BYE":
		if s.cmd != "LOGOUT" {
			s.errorf("disconnected", "unexpected BYE: %q", r.raw)
			return errCheck
		}
	case "BAD":
		s.errorf("BAD", "untagged %q", r.raw)
	case "OK", "NO":
		if strings.Contains(r.code(), "SERVERBUG") {
			s.errorf("SERVERBUG", "%q", r.raw)
		}
		s.noteCode(r)
	case "FLAGS":
		if s.sel != nil && len(r.fields) > 1 {
			s.sel.keywords = map[string]bool{}
			for _, f := range r.fields[1].list {
				s.sel.keywords[strings.ToLower(f.s)] = true
			}
		}
	case "EXISTS":
		if s.sel == nil {
			s.errorf("protocol", "EXISTS with no mailbox selected")
			return errCheck
		}
		n := int(r.number())
		if n < len(s.sel.uids) {
			s.errorf("EXISTS", "EXISTS %d after %d messages, without EXPUNGE", n, len(s.sel.uids))
			return errCheck
		}
		for len(s.sel.uids) < n {
			s.sel.uids = append(s.sel.uids, 0)
		}
	case "EXPUNGE":
		if s.sel == nil {
			s.errorf("protocol", "EXPUNGE with no mailbox selected")
			return errCheck
		}
		switch s.cmd {
		case "FETCH", "STORE", "SEARCH":
			// RFC 3501 7.4.1.
			s.errorf("EXPUNGE", "EXPUNGE during %s", s.cmd)
		}
		n := int(r.number())
		if n < 1 || n > len(s.sel.uids) {
			s.errorf("EXPUNGE", "EXPUNGE %d of %d messages", n, len(s.sel.uids))
			return errCheck
		}
		s.sel.uids = slices.Delete(s.sel.uids, n-1, n)
	case "FETCH":
		return s.fetched(r)
	case "SEARCH":
		if s.sel == nil {
			return nil
		}
		last := uint64(0)
		for _, f := range r.fields[1:] {
			if !f.isNum || f.num <= last {
				s.errorf("SEARCH", "results not ascending: %q", r.raw)
				break
			}
			last = f.num
			if s.cmd == "SEARCH" && f.num > uint64(len(s.sel.uids)) {
				s.errorf("SEARCH", "message %d of %d", f.num, len(s.sel.uids))
			}
		}
	}
	return nil
}

// fetched checks a FETCH response: its number in range, a UID that names
// the message it named before and sits between its neighbours', keywords
// announced before use, \Recent in one session only, bytes as appended.
func (s *session) fetched(r *response) error {
	sel := s.sel
	if sel == nil {
		s.errorf("protocol", "FETCH with no mailbox selected")
		return errCheck
	}
	n := int(r.number())
	if n < 1 || n > len(sel.uids) {
		s.errorf("FETCH", "FETCH of message %d of %d: %q", n, len(sel.uids), clip(r.raw))
		return errCheck
	}
	items := fetchItems(r)
	uid := sel.uids[n-1]
	if v, ok := items["UID"]; ok {
		got := uint32(v.num)
		if uid != 0 && uid != got {
			s.errorf("UID changed", "message %d was UID %d, now %d", n, uid, got)
			return errCheck
		}
		if n > 1 && sel.uids[n-2] != 0 && sel.uids[n-2] >= got || n < len(sel.uids) && sel.uids[n] != 0 && sel.uids[n] <= got {
			s.errorf("UID order", "message %d has UID %d between %d and %d", n, got, sel.uids[max(n-2, 0)], sel.uids[min(n, len(sel.uids)-1)])
			return errCheck
		}
		uid, sel.uids[n-1] = got, got
	}
	key := uidKey{s.user.Name, sel.name, sel.uidvalidity, uid}
	if v, ok := items["FLAGS"]; ok {
		for _, f := range v.list {
			if f.s == "" || f.s[0] != '\\' {
				if !sel.keywords[strings.ToLower(f.s)] {
					s.errorf("keyword not announced", "%s shown before FLAGS listed it", f.s)
				}
				continue
			}
			// An examining session sees \Recent without taking it.
			if strings.EqualFold(f.s, `\Recent`) && uid != 0 && !sel.readOnly {
				s.reg.sawRecent(key, s.id)
			}
		}
	}
	if uid == 0 {
		return nil
	}
	// An empty body is a message another session expunged meanwhile
	// (RFC 2180 4.1.2, what Dovecot answers).
	if v, ok := items["BODY[]"]; ok && v.s != "" {
		s.reg.sawBody(key, v.s, s.id)
	}
	if v, ok := items["ENVELOPE"]; ok && v.kind == vList && len(v.list) == 10 {
		s.reg.sawMessage(key, v.list[9].s, s.id)
	}
	return nil
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// selectMailbox selects (or examines) a mailbox and learns its UIDs.
func (s *session) selectMailbox(ctx context.Context, name string, readOnly bool) error {
	verb := "SELECT"
	if readOnly {
		verb = "EXAMINE"
	}
	s.sel = &selected{name: name, readOnly: readOnly, keywords: map[string]bool{}}
	st, tagged, err := s.run(ctx, verb+" "+name, "")
	if err != nil {
		return err
	}
	if st != "OK" {
		s.errorf("SELECT", "%q", tagged.raw)
		s.sel = nil
		return nil
	}
	return nil
}

// noteCode takes UIDVALIDITY from SELECT's untagged OK.
func (s *session) noteCode(r *response) {
	if s.sel == nil {
		return
	}
	code := r.code()
	if v, ok := strings.CutPrefix(code, "UIDVALIDITY "); ok {
		n, _ := strconv.ParseUint(v, 10, 32)
		s.sel.uidvalidity = uint32(n)
	}
}
