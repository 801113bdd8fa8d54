package imapstore

import (
	"sort"
	"strings"

	"mailcapture/imapwire"
	"mailcapture/store"
)

// listOptions are LIST's selection and return options (RFC 5258).
type listOptions struct {
	subscribed, specialUse, recursive bool // selection
	retSubscribed, retChildren        bool
	retSpecialUse                     bool
	retStatus                         statusItems
	extended                          bool // any extended syntax used
}

// cmdList runs LIST (RFC 3501 6.3.8) with LIST-EXTENDED (RFC 5258),
// LIST-STATUS (RFC 5819) and SPECIAL-USE (RFC 6154).
func (s *session) cmdList() error {
	var opts listOptions
	if err := s.r.SP(); err != nil {
		return err
	}
	if s.r.Peek() == '(' {
		opts.extended = true
		err := s.r.List(func() error {
			a, err := s.r.AtomUpper()
			switch {
			case err != nil:
				return err
			case a == "SUBSCRIBED":
				opts.subscribed = true
			case a == "SPECIAL-USE":
				opts.specialUse = true
			case a == "RECURSIVEMATCH":
				opts.recursive = true
			case a == "REMOTE":
			default:
				return bad("unknown LIST selection option %s", a)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// RFC 5258 3: RECURSIVEMATCH needs a selection option it refines.
		if opts.recursive && !opts.subscribed {
			return bad("RECURSIVEMATCH needs another selection option")
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	refRaw, err := s.r.Astring()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	var patternsRaw []string
	if s.r.Peek() == '(' {
		opts.extended = true
		err = s.r.List(func() error {
			p, err := s.r.ListMailbox()
			patternsRaw = append(patternsRaw, p)
			return err
		})
		if err == nil && len(patternsRaw) == 0 {
			err = bad("LIST needs a pattern")
		}
	} else {
		var p string
		p, err = s.r.ListMailbox()
		patternsRaw = append(patternsRaw, p)
	}
	if err != nil {
		return err
	}
	if s.r.Peek() == ' ' {
		s.r.SP()
		if !s.r.MaybeWord("RETURN") {
			return bad("expected RETURN")
		}
		opts.extended = true
		if err := s.r.SP(); err != nil {
			return err
		}
		err := s.r.List(func() error {
			a, err := s.r.AtomUpper()
			switch {
			case err != nil:
				return err
			case a == "SUBSCRIBED":
				opts.retSubscribed = true
			case a == "CHILDREN":
				opts.retChildren = true
			case a == "SPECIAL-USE":
				opts.retSpecialUse = true
			case a == "STATUS":
				if err := s.r.SP(); err != nil {
					return err
				}
				opts.retStatus, err = s.statusItemsArg()
				return err
			default:
				return bad("unknown LIST return option %s", a)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := s.end(); err != nil {
		return err
	}
	ref, err := imapwire.DecodeUTF7(refRaw)
	if err != nil {
		return bad("the reference %q is not valid modified UTF-7 (RFC 3501 5.1.3)", refRaw)
	}
	var patterns []string
	for _, p := range patternsRaw {
		dp, err := imapwire.DecodeUTF7(p)
		if err != nil {
			return bad("the pattern %q is not valid modified UTF-7 (RFC 3501 5.1.3)", p)
		}
		patterns = append(patterns, ref+dp)
	}
	sep := s.separator()
	if !opts.extended && len(patterns) == 1 && patternsRaw[0] == "" {
		// RFC 3501 6.3.8: the hierarchy delimiter and the root name.
		root := ""
		if i := strings.Index(ref, sep); i >= 0 {
			root = ref[:i+1]
		}
		s.out = append(s.out[:0], `* LIST (\Noselect) `...)
		s.out = imapwire.AppendQuotedOrLiteral(s.out, sep)
		s.out = append(s.out, ' ')
		s.out = imapwire.AppendQuotedOrLiteral(s.out, imapwire.EncodeUTF7(root))
		s.out = append(s.out, "\r\n"...)
		s.w.Write(s.out)
		return nil
	}
	tree, err := s.tree()
	if err != nil {
		return err
	}
	match := newMatcher(patterns, sep)
	for _, name := range tree.sorted() {
		node := tree.nodes[name]
		if !match.any(name) {
			continue
		}
		var attrs []string
		childInfo := false
		switch {
		case opts.subscribed:
			if !node.subscribed {
				if !opts.recursive || !tree.hasUnmatched(name, sep, match, func(n *treeNode) bool { return n.subscribed }) {
					continue
				}
				childInfo = true
			} else if opts.recursive && tree.hasUnmatched(name, sep, match, func(n *treeNode) bool { return n.subscribed }) {
				childInfo = true
			}
			if opts.specialUse && (node.mb == nil || len(node.mb.SpecialUse) == 0) {
				continue
			}
		case opts.specialUse:
			if node.mb == nil || len(node.mb.SpecialUse) == 0 {
				continue
			}
		default:
			if node.mb == nil && !node.parent {
				continue // only subscribed: not a name LIST shows
			}
		}
		switch {
		case node.mb == nil && node.parent:
			attrs = append(attrs, `\Noselect`)
		case node.mb == nil:
			attrs = append(attrs, `\NonExistent`)
		}
		// Children attributes always, as Dovecot gives them, except with
		// SUBSCRIBED selection unless asked (RFC 5258 4).
		if (node.mb != nil || node.parent) && (!opts.subscribed || opts.retChildren) {
			if tree.hasChildren(name, sep) {
				attrs = append(attrs, `\HasChildren`)
			} else {
				attrs = append(attrs, `\HasNoChildren`)
			}
		}
		if node.subscribed && (opts.subscribed || opts.retSubscribed) {
			attrs = append(attrs, `\Subscribed`)
		}
		if node.mb != nil {
			attrs = append(attrs, node.mb.SpecialUse...)
		}
		s.out = append(s.out[:0], "* LIST ("...)
		s.out = append(s.out, strings.Join(attrs, " ")...)
		s.out = append(s.out, ") "...)
		s.out = imapwire.AppendQuotedOrLiteral(s.out, sep)
		s.out = append(s.out, ' ')
		s.out = appendName(s.out, name)
		if childInfo {
			s.out = append(s.out, ` (CHILDINFO ("SUBSCRIBED"))`...)
		}
		s.out = append(s.out, "\r\n"...)
		s.w.Write(s.out)
		if opts.retStatus != nil && node.mb != nil {
			if err := s.writeStatus(*node.mb, opts.retStatus); err != nil {
				return err
			}
		}
	}
	return nil
}

// appendName writes a mailbox name as Dovecot does: an atom when it can
// be, else quoted (or a literal).
func appendName(buf []byte, name string) []byte {
	return imapwire.AppendAstring(buf, imapwire.EncodeUTF7(name))
}

// cmdLsub runs LSUB (RFC 3501 6.3.9): subscribed names, \Noselect where
// no mailbox has the name, and with "%" the unsubscribed parents of
// subscribed names as \Noselect.
func (s *session) cmdLsub() error {
	if err := s.r.SP(); err != nil {
		return err
	}
	refRaw, err := s.r.Astring()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	patRaw, err := s.r.ListMailbox()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	ref, err1 := imapwire.DecodeUTF7(refRaw)
	pat, err2 := imapwire.DecodeUTF7(patRaw)
	if err1 != nil || err2 != nil {
		return bad("the reference or pattern is not valid modified UTF-7 (RFC 3501 5.1.3)")
	}
	sep := s.separator()
	tree, err := s.tree()
	if err != nil {
		return err
	}
	match := newMatcher([]string{ref + pat}, sep)
	shown := map[string]bool{}
	for _, name := range tree.sorted() {
		node := tree.nodes[name]
		if !node.subscribed {
			continue
		}
		if match.any(name) {
			s.writeLsub(name, node.mb == nil, sep)
			shown[name] = true
			continue
		}
		if !strings.Contains(pat, "%") {
			continue
		}
		// The nearest parent the pattern matches stands for it.
		levels := strings.Split(name, sep)
		for n := len(levels) - 1; n >= 1; n-- {
			parent := strings.Join(levels[:n], sep)
			if match.any(parent) {
				if !shown[parent] && !(tree.nodes[parent] != nil && tree.nodes[parent].subscribed) {
					s.writeLsub(parent, true, sep)
					shown[parent] = true
				}
				break
			}
		}
	}
	return nil
}

func (s *session) writeLsub(name string, noselect bool, sep string) {
	s.out = append(s.out[:0], "* LSUB ("...)
	if noselect {
		s.out = append(s.out, `\Noselect`...)
	}
	s.out = append(s.out, ") "...)
	s.out = imapwire.AppendQuotedOrLiteral(s.out, sep)
	s.out = append(s.out, ' ')
	s.out = appendName(s.out, name)
	s.out = append(s.out, "\r\n"...)
	s.w.Write(s.out)
}

// treeNode is a name of the account's hierarchy.
type treeNode struct {
	mb         *store.Mailbox // nil: no mailbox has the name
	parent     bool           // a mailbox below has it as an ancestor
	subscribed bool
}

// mailboxTree is every name LIST and LSUB may show: mailboxes, the
// ancestors of their names, and subscribed names.
type mailboxTree struct {
	nodes map[string]*treeNode
	names []string
}

func (s *session) tree() (*mailboxTree, error) {
	ctx, cancel := s.opCtx()
	defer cancel()
	boxes, err := s.srv.store.Mailboxes(ctx, s.acct.ID)
	if err != nil {
		return nil, err
	}
	subs, err := s.srv.store.Subscriptions(ctx, s.acct.ID)
	if err != nil {
		return nil, err
	}
	sep := s.separator()
	t := &mailboxTree{nodes: map[string]*treeNode{}}
	node := func(name string) *treeNode {
		n := t.nodes[name]
		if n == nil {
			n = &treeNode{}
			t.nodes[name] = n
		}
		return n
	}
	for i := range boxes {
		name := boxes[i].Name
		node(name).mb = &boxes[i]
		for j := strings.LastIndex(name, sep); j > 0; j = strings.LastIndex(name[:j], sep) {
			node(name[:j]).parent = true
		}
	}
	for _, name := range subs {
		node(canonicalName(name)).subscribed = true
	}
	for name := range t.nodes {
		t.names = append(t.names, name)
	}
	sort.Strings(t.names)
	return t, nil
}

func (t *mailboxTree) sorted() []string { return t.names }

// hasChildren tells whether a name has a mailbox (or a parent of one)
// below it.
func (t *mailboxTree) hasChildren(name, sep string) bool {
	prefix := name + sep
	i := sort.SearchStrings(t.names, prefix)
	for ; i < len(t.names) && strings.HasPrefix(t.names[i], prefix); i++ {
		if n := t.nodes[t.names[i]]; n.mb != nil || n.parent {
			return true
		}
	}
	return false
}

// hasUnmatched tells whether a name has a descendant that meets ok and
// that the patterns do not match (RFC 5258 3.5, RECURSIVEMATCH).
func (t *mailboxTree) hasUnmatched(name, sep string, m *matcher, ok func(*treeNode) bool) bool {
	prefix := name + sep
	i := sort.SearchStrings(t.names, prefix)
	for ; i < len(t.names) && strings.HasPrefix(t.names[i], prefix); i++ {
		if ok(t.nodes[t.names[i]]) && !m.any(t.names[i]) {
			return true
		}
	}
	return false
}

// matcher matches names against LIST patterns: "*" matches anything, "%"
// anything but the separator; INBOX matches in any case (RFC 3501 6.3.8).
type matcher struct {
	patterns []string
	sep      byte
}

func newMatcher(patterns []string, sep string) *matcher {
	m := &matcher{sep: sep[0]}
	for _, p := range patterns {
		if len(p) >= 5 && strings.EqualFold(p[:5], "INBOX") && (len(p) == 5 || p[5] == sep[0] || p[5] == '*' || p[5] == '%') {
			p = "INBOX" + p[5:]
		}
		m.patterns = append(m.patterns, p)
	}
	return m
}

func (m *matcher) any(name string) bool {
	for _, p := range m.patterns {
		if m.match(p, name) {
			return true
		}
	}
	return false
}

// match runs in O(len(p) * len(name)) whatever the pattern: a set of
// the pattern positions reachable after each byte of the name.
func (m *matcher) match(p, name string) bool {
	cur := make([]bool, len(p)+1)
	next := make([]bool, len(p)+1)
	cur[0] = true
	closeWild := func(states []bool) {
		for i := 0; i < len(p); i++ {
			if states[i] && (p[i] == '*' || p[i] == '%') {
				states[i+1] = true
			}
		}
	}
	closeWild(cur)
	for k := 0; k < len(name); k++ {
		c := name[k]
		clear(next)
		any := false
		for i := 0; i < len(p); i++ {
			if !cur[i] {
				continue
			}
			switch p[i] {
			case '*':
				next[i] = true
			case '%':
				if c != m.sep {
					next[i] = true
				}
			default:
				if p[i] == c {
					next[i+1] = true
				}
			}
		}
		closeWild(next)
		for _, b := range next {
			any = any || b
		}
		if !any {
			return false
		}
		cur, next = next, cur
	}
	return cur[len(p)]
}
