package addresses

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Table is the admin's alias table, in Postfix virtual(5) syntax: each
// logical line is a pattern and its targets,
//
//	robert@example.org   bob@example.org
//	team@example.org     bob@example.org, alice@example.org
//	@example.org         postmaster@example.org
//
// "user@domain" is an alias, "@domain" the domain's catch-all. Targets are
// separated by commas or white space; a target without a domain gets the
// default domain (Postfix appends $myorigin). A line that starts with
// white space continues the one before; lines whose first non-blank
// character is "#" are comments. A pattern that is a domain alone (the
// "virtual alias domain" form) is accepted and has no effect. A Table is
// never changed once parsed: a reload makes a new one.
type Table struct {
	aliases  map[string][]string // lower-case address → targets
	catchAll map[string][]string // lower-case domain → targets
	entries  []Entry
}

// Entry is one line of the table.
type Entry struct {
	Pattern string   `json:"pattern"`
	Targets []string `json:"targets"`
	Line    int      `json:"line"`
}

// LineError is a problem of one line of the table.
type LineError struct {
	Line int
	Msg  string
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Empty is a table with no entries.
func Empty() *Table { return &Table{} }

// Len is the number of patterns.
func (t *Table) Len() int { return len(t.entries) }

// Entries are the table's lines, in file order.
func (t *Table) Entries() []Entry { return t.entries }

// LoadFile parses the table in path (see Parse).
func LoadFile(path, defaultDomain string) (*Table, []LineError, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	t, warnings, err := Parse(f, defaultDomain)
	if err != nil {
		return nil, warnings, fmt.Errorf("%s: %w", path, err)
	}
	return t, warnings, nil
}

// maxLineErrors bounds how many problems are reported.
const maxLineErrors = 20

// Parse reads a table. A line that cannot be understood (a pattern that
// is not an address, an alias without targets, a target that is not an
// address) is an error, and the whole table is refused: an admin's typo
// must not send mail astray. Lines Postfix accepts and mailcapture does
// not use (a pattern without "@", which Postfix matches only in its local
// domains) and duplicate patterns (the first wins, as postmap keeps it)
// are warnings.
func Parse(r io.Reader, defaultDomain string) (*Table, []LineError, error) {
	t := &Table{aliases: map[string][]string{}, catchAll: map[string][]string{}}
	var errs, warnings []LineError
	add := func(line int, text string) {
		fields := strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
		pattern := fields[0]
		targets := fields[1:]
		if !strings.Contains(pattern, "@") {
			if strings.Contains(pattern, ".") {
				return // "example.org anything": declares a virtual alias domain
			}
			warnings = append(warnings, LineError{line, fmt.Sprintf("%q has no @domain: Postfix matches it only in its local domains; ignored (write %s@domain)", pattern, pattern)})
			return
		}
		if len(targets) == 0 {
			errs = append(errs, LineError{line, fmt.Sprintf("%q has no target", pattern)})
			return
		}
		local, domain, _ := strings.Cut(pattern, "@")
		if strings.Contains(domain, "@") || !validDomain(domain) {
			errs = append(errs, LineError{line, fmt.Sprintf("%q is not an address or @domain", pattern)})
			return
		}
		var out []string
		for _, tgt := range targets {
			full, ok := target(tgt, defaultDomain)
			if !ok {
				errs = append(errs, LineError{line, fmt.Sprintf("target %q is not an address", tgt)})
				return
			}
			out = append(out, full)
		}
		key, m := strings.ToLower(pattern), t.aliases
		if local == "" {
			key, m = strings.ToLower(domain), t.catchAll
		}
		if _, dup := m[key]; dup {
			warnings = append(warnings, LineError{line, fmt.Sprintf("%q is listed again; the first line wins", pattern)})
			return
		}
		m[key] = out
		t.entries = append(t.entries, Entry{Pattern: pattern, Targets: out, Line: line})
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var logical strings.Builder
	start, n := 0, 0
	flush := func() {
		if logical.Len() > 0 {
			add(start, logical.String())
			logical.Reset()
		}
	}
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), "\r")
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || trimmed[0] == '#':
			continue
		case line[0] == ' ' || line[0] == '\t':
			if logical.Len() == 0 {
				errs = append(errs, LineError{n, "a continuation line with nothing to continue"})
				continue
			}
			logical.WriteString(" " + trimmed)
		default:
			flush()
			start = n
			logical.WriteString(trimmed)
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, warnings, fmt.Errorf("line %d: %w", n+1, err)
	}
	if len(errs) > 0 {
		joined := make([]error, 0, min(len(errs), maxLineErrors)+1)
		for i, e := range errs {
			if i == maxLineErrors {
				joined = append(joined, fmt.Errorf("and %d more", len(errs)-maxLineErrors))
				break
			}
			joined = append(joined, e)
		}
		return nil, warnings, errors.Join(joined...)
	}
	return t, warnings, nil
}

// target is a target address with its domain (the default one if it
// has none).
func target(s, defaultDomain string) (string, bool) {
	local, domain, found := strings.Cut(s, "@")
	switch {
	case local == "":
		return "", false
	case !found:
		if defaultDomain == "" {
			return "", false
		}
		return s + "@" + defaultDomain, true
	case strings.Contains(domain, "@") || !validDomain(domain):
		return "", false
	}
	return local + "@" + strings.ToLower(domain), true
}

// validDomain accepts host names (and what Postfix tables hold: a
// trailing dot is not one).
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c > 0x7f) {
				return false
			}
		}
	}
	return true
}

// maxDepth and maxTargets bound an expansion, as Postfix's
// virtual_alias_recursion_limit and virtual_alias_expansion_limit do.
const (
	maxDepth   = 100
	maxTargets = 1000
)

// ErrLoop is an alias table whose expansion of an address does not end.
var ErrLoop = errors.New("the alias table loops")

// ErrTooMany is an expansion to more addresses than one message may go to.
var ErrTooMany = fmt.Errorf("the alias table expands the address to more than %d addresses", maxTargets)

// Expansion is what an address resolves to.
type Expansion struct {
	// Finals are the addresses the mail goes to, each once, in the
	// order met.
	Finals []string
	// Via says how: "address" (itself), "delimiter" (itself, extension
	// taken off for the account), "alias", "catch-all".
	Via string
}

// Expand resolves addr the way Postfix's virtual alias expansion does:
// the address itself, then without its extension (the extension is then
// added to each target, Postfix's propagate_unmatched_extensions), then
// the domain's catch-all; targets are expanded again, an address that
// expands to itself is final. Unlike Postfix, an address whose account
// mailcapture knows (known, given the address without extension) is not
// taken by a catch-all: the mailbox is real, whether or not the table
// lists it; and a target an alias names is not taken by a catch-all
// either (Postfix would, unless the table also maps the target to
// itself).
func (t *Table) Expand(n Naming, addr string, known func(base string) bool) (Expansion, error) {
	x := expander{t: t, n: n, known: known, seen: map[string]bool{}, path: map[string]bool{}}
	via, err := x.walk(addr, 0)
	if err != nil {
		return Expansion{}, err
	}
	if via == "address" && n.Base(addr) != addr {
		via = "delimiter"
	}
	return Expansion{Finals: x.finals, Via: via}, nil
}

type expander struct {
	t      *Table
	n      Naming
	known  func(string) bool
	finals []string
	seen   map[string]bool // finals, lower case
	path   map[string]bool // addresses being expanded
}

func (x *expander) final(addr string) error {
	if k := strings.ToLower(addr); !x.seen[k] {
		if len(x.finals) == maxTargets {
			return ErrTooMany
		}
		x.seen[k] = true
		x.finals = append(x.finals, addr)
	}
	return nil
}

func (x *expander) walk(addr string, depth int) (via string, err error) {
	key := strings.ToLower(addr)
	if x.path[key] || depth > maxDepth {
		return "", fmt.Errorf("%w at %s", ErrLoop, addr)
	}
	targets, via := x.t.lookup(x.n, addr, x.known, depth == 0)
	if targets == nil {
		return "address", x.final(addr)
	}
	x.path[key] = true
	defer delete(x.path, key)
	for _, tgt := range targets {
		if strings.EqualFold(tgt, addr) {
			if err := x.final(tgt); err != nil {
				return "", err
			}
			continue
		}
		if _, err := x.walk(tgt, depth+1); err != nil {
			return "", err
		}
	}
	return via, nil
}

// lookup is one step of an expansion: the targets of addr, or nil. The
// catch-all is looked at for the recipient itself only (withCatchAll), not
// for the targets an alias names.
func (t *Table) lookup(n Naming, addr string, known func(string) bool, withCatchAll bool) ([]string, string) {
	if t == nil || len(t.entries) == 0 {
		return nil, ""
	}
	if v, ok := t.aliases[strings.ToLower(addr)]; ok {
		return v, "alias"
	}
	base, ext := n.Base(addr), n.extension(addr)
	if ext != "" {
		if v, ok := t.aliases[strings.ToLower(base)]; ok {
			return withExtension(v, ext), "alias"
		}
	}
	if v, ok := t.catchAll[Domain(addr)]; ok && withCatchAll && (known == nil || !known(base)) {
		return withExtension(v, ext), "catch-all"
	}
	return nil, ""
}

// withExtension adds ext to the local part of each target.
func withExtension(targets []string, ext string) []string {
	if ext == "" {
		return targets
	}
	out := make([]string, len(targets))
	for i, tgt := range targets {
		local, domain, _ := split(tgt)
		out[i] = local + ext + "@" + domain
	}
	return out
}

// Targets lists, sorted, the patterns whose targets include addr (for
// `addresses check`: what reaches an account).
func (t *Table) Targets(addr string) []string {
	var out []string
	for _, e := range t.entries {
		for _, tgt := range e.Targets {
			if strings.EqualFold(tgt, addr) {
				out = append(out, e.Pattern)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}
