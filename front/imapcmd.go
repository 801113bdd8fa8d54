package front

import (
	"bufio"
	"errors"

	"mailcapture/imapwire"
)

// Limits on what a client may send before it is authenticated. A line
// holds a whole ID command within RFC 2971's limits (30 fields of 30
// bytes with values of 1,024).
const (
	maxPreauthLine    = 40 * 1024
	maxPreauthLiteral = 8 * 1024
	maxPreauthArg     = 8 * 1024 // a user name, password or SASL response
	// maxPreauthCommand bounds a whole command, its literals included.
	maxPreauthCommand = 64 * 1024
	maxIDFields       = 30
	maxIDField        = 30
	maxIDValue        = 1024
)

// errUnknownCommand is a command the not-authenticated state does not
// know, or input that is not IMAP at all: the session ends.
var errUnknownCommand = errors.New("unknown command before login")

// preauthCommand is one parsed command of the not-authenticated state.
type preauthCommand struct {
	tag  string
	name string // upper case
	// args: LOGIN's user name and password; AUTHENTICATE's mechanism
	// and initial response.
	args []string
}

// newPreauthReader reads the commands of the not-authenticated state
// within its limits; cont asks for a synchronising literal.
func newPreauthReader(br *bufio.Reader, cont func() error) *imapwire.Reader {
	r := imapwire.NewReader(br)
	r.MaxLine, r.MaxLiteral, r.MaxCommand = maxPreauthLine, maxPreauthLiteral, maxPreauthCommand
	r.Continue = cont
	return r
}

// readPreauth reads one command. Errors: *imapwire.ErrLineTooLong,
// *imapwire.LimitError and *imapwire.SyntaxError (the command's tag, if it
// was read, is r.CurrentTag()), errUnknownCommand, or the connection's.
func readPreauth(r *imapwire.Reader) (*preauthCommand, error) {
	if err := r.Begin(); err != nil {
		return nil, err
	}
	tag, err := r.Tag()
	if err != nil {
		return nil, errUnknownCommand
	}
	cmd := &preauthCommand{tag: tag}
	if r.SP() != nil {
		return cmd, errUnknownCommand
	}
	if cmd.name, err = r.AtomUpper(); err != nil {
		return cmd, errUnknownCommand
	}
	arg := func() (string, error) {
		if err := r.SP(); err != nil {
			return "", err
		}
		a, err := r.Astring()
		if err == nil && len(a) > maxPreauthArg {
			err = &imapwire.LimitError{Msg: "argument too long"}
		}
		return a, err
	}
	switch cmd.name {
	case "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS":
	case "LOGIN":
		for i := 0; i < 2; i++ {
			a, err := arg()
			if err != nil {
				return cmd, err
			}
			cmd.args = append(cmd.args, a)
		}
	case "AUTHENTICATE":
		if err := r.SP(); err != nil {
			return cmd, err
		}
		mech, err := r.AtomUpper()
		if err != nil {
			return cmd, err
		}
		cmd.args = append(cmd.args, mech)
		if !r.AtEnd() {
			ir, err := arg()
			if err != nil {
				return cmd, err
			}
			cmd.args = append(cmd.args, ir)
		}
	case "ID":
		if err := readID(r); err != nil {
			return cmd, err
		}
	default:
		if authenticatedCommands[cmd.name] {
			return cmd, &imapwire.SyntaxError{Msg: cmd.name + " is not allowed before login"}
		}
		return cmd, errUnknownCommand
	}
	return cmd, r.End()
}

// authenticatedCommands are IMAP commands of the later states: before
// login they get BAD, not the end of the session.
var authenticatedCommands = map[string]bool{
	"SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true, "RENAME": true, "SUBSCRIBE": true,
	"UNSUBSCRIBE": true, "LIST": true, "LSUB": true, "STATUS": true, "APPEND": true, "CHECK": true,
	"CLOSE": true, "UNSELECT": true, "EXPUNGE": true, "SEARCH": true, "FETCH": true, "STORE": true,
	"COPY": true, "MOVE": true, "UID": true, "IDLE": true, "NAMESPACE": true, "ENABLE": true,
}

// readID reads RFC 2971 ID's argument within its limits.
func readID(r *imapwire.Reader) error {
	if err := r.SP(); err != nil {
		return err
	}
	if r.MaybeWord("NIL") {
		return nil
	}
	n := 0
	return r.List(func() error {
		s, _, err := r.NString()
		if err != nil {
			return err
		}
		field := n%2 == 0
		n++
		switch {
		case n > 2*maxIDFields:
			return &imapwire.SyntaxError{Msg: "ID: more than 30 fields (RFC 2971)"}
		case field && len(s) > maxIDField:
			return &imapwire.SyntaxError{Msg: "ID: a field name over 30 bytes (RFC 2971)"}
		case !field && len(s) > maxIDValue:
			return &imapwire.SyntaxError{Msg: "ID: a value over 1024 bytes (RFC 2971)"}
		}
		return nil
	})
}
