// Package sieve runs a user's Sieve script (RFC 5228) at delivery, on
// the go-sieve interpreter, and says what to do with the message: keep
// it, file it into folders with flags, redirect it, discard or reject
// it, and whether a vacation reply (RFC 5230) is due.
//
// go-sieve has no vacation extension. Before the script is loaded, each
// vacation command is read here and replaced by an environment test
// (RFC 5183) of a name of ours, so the interpreter still decides whether
// control reaches it; the test calls back (environment items are read
// at run time), and the reply's strings are expanded with the
// script's variables at that moment.
package sieve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	"github.com/foxcpp/go-sieve/interp"
	"github.com/foxcpp/go-sieve/lexer"
	"github.com/foxcpp/go-sieve/parser"
)

// MaxScriptBytes bounds a script.
const MaxScriptBytes = 1 << 20

// Script is a compiled script.
type Script struct {
	script    *interp.Script
	vacations []Vacation
	variables bool
}

// Vacation is one vacation command's arguments (RFC 5230 4, 4.x).
type Vacation struct {
	// Days (or Seconds, from vacation-seconds, RFC 6131) is how long a
	// sender answered once is not answered again; 0 means the default.
	Days, Seconds int
	Subject       string
	From          string
	// Addresses are the user's other addresses (a message to one of them
	// is for the user).
	Addresses []string
	// Mime: Reason is a MIME entity, not plain text.
	Mime bool
	// Handle names this reply for the memory of who was answered; by
	// default a digest of the reason, :subject, :from and :mime as the
	// script writes them.
	Handle string
	Reason string
}

// The extensions scripts may require: go-sieve's, and vacation.
var extensions = "fileinto envelope encoded-character comparator-i;octet comparator-i;ascii-casemap comparator-i;ascii-numeric " +
	"comparator-i;unicode-casemap imap4flags variables relational copy reject ereject subaddress environment body vacation vacation-seconds"

// Extensions lists the extensions scripts may require (ManageSieve's
// SIEVE capability).
func Extensions() string { return extensions }

// vacationItem is the environment name prefix that stands for a
// vacation command.
const vacationItem = "vnd.mailcapture.vacation."

// Compile checks a script and prepares it to run. Its error says where
// the script is wrong, as a user editing it needs.
func Compile(src []byte, subaddressSep string) (s *Script, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("the script cannot be read: %v", r)
		}
	}()
	if len(src) > MaxScriptBytes {
		return nil, fmt.Errorf("script of %d bytes: at most %d", len(src), MaxScriptBytes)
	}
	lexOpts := lexer.Options{MaxTokens: 20000}
	toks, err := lexer.Lex(bytes.NewReader(src), &lexOpts)
	if err != nil {
		return nil, err
	}
	cmds, err := parser.Parse(lexer.NewStream(toks), &parser.Options{MaxBlockNesting: 15, MaxTestNesting: 15})
	if err != nil {
		return nil, err
	}
	s = &Script{}
	if cmds, err = s.rewrite(cmds, false); err != nil {
		return nil, err
	}
	loaded, err := interp.LoadScript(cmds, &interp.Options{MaxRedirects: 5, MaxVariableCount: 128, MaxVariableNameLen: 32,
		MaxVariableLen: 4000, SubAddressSep: subaddressSep})
	if err != nil {
		return nil, err
	}
	s.script = loaded
	s.variables = loaded.RequiresExtension("variables")
	return s, nil
}

// rewrite takes the vacation commands out of the command tree: each is
// recorded and replaced by a test of our environment item; "vacation"
// in a require becomes "environment".
func (s *Script) rewrite(cmds []parser.Cmd, nested bool) ([]parser.Cmd, error) {
	out := make([]parser.Cmd, 0, len(cmds))
	for _, c := range cmds {
		switch c.Id {
		case "require":
			c.Args = requireWithoutVacation(c.Args)
		case "vacation":
			v, err := vacationOf(c)
			if err != nil {
				return nil, err
			}
			name := vacationItem + strconv.Itoa(len(s.vacations))
			s.vacations = append(s.vacations, v)
			c = parser.Cmd{Position: c.Position, Id: "if", Block: []parser.Cmd{},
				Tests: []parser.Test{{Position: c.Position, Id: "environment", Args: []parser.Arg{
					parser.StringArg{Value: name, Position: c.Position},
					parser.StringListArg{Value: []string{"reached"}, Position: c.Position}}}}}
		}
		if len(c.Block) > 0 {
			block, err := s.rewrite(c.Block, true)
			if err != nil {
				return nil, err
			}
			c.Block = block
		}
		out = append(out, c)
	}
	return out, nil
}

// requireWithoutVacation replaces vacation and vacation-seconds by
// environment in a require's list.
func requireWithoutVacation(args []parser.Arg) []parser.Arg {
	fix := func(list []string) []string {
		var out []string
		env := false
		for _, ext := range list {
			switch ext {
			case "vacation", "vacation-seconds", "environment":
				if !env {
					out, env = append(out, "environment"), true
				}
			default:
				out = append(out, ext)
			}
		}
		return out
	}
	for i, a := range args {
		switch a := a.(type) {
		case parser.StringArg:
			l := fix([]string{a.Value})
			args[i] = parser.StringListArg{Value: l, Position: a.Position}
		case parser.StringListArg:
			args[i] = parser.StringListArg{Value: fix(a.Value), Position: a.Position}
		}
	}
	return args
}

// vacationOf reads a vacation command's arguments.
func vacationOf(c parser.Cmd) (Vacation, error) {
	var v Vacation
	bad := func(format string, args ...any) (Vacation, error) {
		return v, fmt.Errorf("line %d: vacation: %s", c.Line, fmt.Sprintf(format, args...))
	}
	args := c.Args
	str := func(i int) (string, bool) {
		if i < len(args) {
			if a, ok := args[i].(parser.StringArg); ok {
				return a.Value, true
			}
		}
		return "", false
	}
	reasonSeen := false
	for i := 0; i < len(args); i++ {
		switch a := args[i].(type) {
		case parser.TagArg:
			switch strings.ToLower(a.Value) {
			case "days", "seconds":
				n, ok := parser.Arg(nil), false
				if i+1 < len(args) {
					n = args[i+1]
					_, ok = n.(parser.NumberArg)
				}
				if !ok {
					return bad(":%s needs a number", a.Value)
				}
				if strings.EqualFold(a.Value, "days") {
					v.Days = n.(parser.NumberArg).Value
				} else {
					v.Seconds = n.(parser.NumberArg).Value
				}
				i++
			case "subject", "from", "handle":
				val, ok := str(i + 1)
				if !ok {
					return bad(":%s needs a string", a.Value)
				}
				switch strings.ToLower(a.Value) {
				case "subject":
					v.Subject = val
				case "from":
					v.From = val
				default:
					v.Handle = val
				}
				i++
			case "addresses":
				if i+1 >= len(args) {
					return bad(":addresses needs a string list")
				}
				switch l := args[i+1].(type) {
				case parser.StringListArg:
					v.Addresses = l.Value
				case parser.StringArg:
					v.Addresses = []string{l.Value}
				default:
					return bad(":addresses needs a string list")
				}
				i++
			case "mime":
				v.Mime = true
			default:
				return bad("unknown argument :%s", a.Value)
			}
		case parser.StringArg:
			if reasonSeen || i != len(args)-1 {
				return bad("the reason must be the last argument")
			}
			v.Reason, reasonSeen = a.Value, true
		default:
			return bad("unexpected argument")
		}
	}
	if !reasonSeen {
		return bad("no reason")
	}
	if v.Handle == "" {
		// RFC 5230 4.2: by default the reply's arguments name it, as the
		// script has them (before variables are expanded): the same rule
		// is one reply per sender, whatever the subject of each message.
		sum := sha256.Sum256([]byte(v.Reason + "\x00" + v.Subject + "\x00" + v.From + "\x00" + strconv.FormatBool(v.Mime)))
		v.Handle = "auto:" + hex.EncodeToString(sum[:8])
	}
	return v, nil
}

// Envelope is the message's envelope as the recipient's delivery sees
// it.
type Envelope struct {
	From string
	// To is the envelope recipient (with its extension, if any).
	To string
}

// Message is what the script tests: the header, the size and, for body
// tests, the whole message (nil: body tests fail).
type Message struct {
	Header textproto.MIMEHeader
	Size   int
	Raw    []byte
}

// FileInto is a copy filed into a folder, with flags.
type FileInto struct {
	Mailbox string
	Flags   []string
}

// Outcome is what the script decided.
type Outcome struct {
	// Keep: a copy goes to INBOX (explicit keep or the implicit one),
	// with KeepFlags.
	Keep      bool
	KeepFlags []string
	FileInto  []FileInto
	Redirects []string
	// Reject is the refusal's text (reject or ereject).
	Reject string
	// Vacation, if set, is the vacation command the script reached.
	Vacation *Vacation
}

// Run runs the script on one message.
func (s *Script) Run(ctx context.Context, env Envelope, msg Message) (Outcome, error) {
	var out Outcome
	hook := &environment{script: s}
	data := interp.NewRuntimeData(s.script, interp.DummyPolicy{}, interp.EnvelopeStatic{From: env.From, To: env.To},
		interp.MessageStatic{Size: msg.Size, Header: msg.Header, RawMessage: msg.Raw})
	data.Env = hook
	hook.data = data
	if err := runRecovered(ctx, s.script, data); err != nil {
		return out, err
	}
	for _, a := range data.AppliedActions {
		switch a := a.(type) {
		case interp.ActionKeep:
			out.Keep, out.KeepFlags = true, []string(a.Flags)
		case interp.ActionFileInto:
			out.FileInto = append(out.FileInto, FileInto{Mailbox: a.Mailbox, Flags: []string(a.Flags)})
		case interp.ActionRedirect:
			out.Redirects = append(out.Redirects, a.Address)
		case interp.ActionReject:
			out.Reject = a.Reason
		case interp.ActionEReject:
			out.Reject = a.Reason
		}
	}
	if hook.err != nil {
		return out, hook.err
	}
	out.Vacation = hook.vacation
	return out, nil
}

// runRecovered executes the script; the interpreter's panics (an unusable
// variable) are errors.
func runRecovered(ctx context.Context, s *interp.Script, d *interp.RuntimeData) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the script failed: %v", r)
		}
	}()
	return s.Execute(ctx, d)
}

// environment answers the environment test (RFC 5183 items) and notes
// the vacation commands reached.
type environment struct {
	script   *Script
	data     *interp.RuntimeData
	vacation *Vacation
	err      error
}

var errTwoVacations = errors.New("the script ran two vacation commands (RFC 5230 4.7: at most one)")

func (e *environment) GetEnvironment(name string) (string, bool) {
	if n, ok := strings.CutPrefix(name, vacationItem); ok {
		i, err := strconv.Atoi(n)
		if err != nil || i < 0 || i >= len(e.script.vacations) {
			return "", false
		}
		if e.vacation != nil {
			e.err = errTwoVacations
			return "", true
		}
		v := e.script.vacations[i]
		if e.script.variables {
			v.Subject, v.From, v.Reason, v.Handle = e.expand(v.Subject), e.expand(v.From), e.expand(v.Reason), e.expand(v.Handle)
			addrs := make([]string, len(v.Addresses))
			for j, a := range v.Addresses {
				addrs[j] = e.expand(a)
			}
			v.Addresses = addrs
		}
		e.vacation = &v
		return "", true
	}
	switch name {
	case "domain", "host":
		return "", false
	case "location":
		return "MDA", true
	case "phase":
		return "during", true
	case "name":
		return "mailcapture", true
	}
	return "", false
}

var variableRef = regexp.MustCompile(`\$\{([a-zA-Z0-9_.]+)\}`)

// expand replaces ${name} and ${n} with the script's variables now.
func (e *environment) expand(s string) string {
	return variableRef.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if n, err := strconv.Atoi(name); err == nil {
			return e.data.MatchVariable(n)
		}
		v, err := e.data.Var(name)
		if err != nil {
			return ""
		}
		return v
	})
}
