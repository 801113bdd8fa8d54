package imapstore

import (
	"sort"
	"strconv"
	"strings"
	"time"

	"mailcapture/imapwire"
)

// searchOp is one kind of search key.
type searchOp int

const (
	opAll searchOp = iota
	opAnd
	opOr
	opNot
	opSeq
	opUID
	opFlag   // has flag
	opRecent // \Recent in this session
	opLarger
	opSmaller
	opBefore // internal date
	opOn
	opSince
	opSentBefore // Date header
	opSentOn
	opSentSince
	opHeader  // field contains value ("" : the field exists)
	opAddress // an address field (FROM, TO, CC, BCC) contains value
	opBody
	opText
)

// searchKey is a parsed search key (RFC 3501 6.4.4).
type searchKey struct {
	op    searchOp
	kids  []*searchKey
	set   imapwire.NumSet
	flag  string
	n     int64
	date  time.Time
	field string // lower case
	value string
	// Set by prepare before a run: set resolved against the mailbox, and
	// whether the key reads the message itself.
	resolved imapwire.NumSet
	content  bool
}

// prepare readies a key tree for a run over a mailbox of count messages
// whose last UID is lastUID: sequence and UID sets resolved ("*"), and
// which keys read the message itself noted, once, not per message.
func (k *searchKey) prepare(count, lastUID uint32) {
	switch k.op {
	case opSeq:
		k.resolved = k.set.Resolve(count)
	case opUID:
		k.resolved = k.set.Resolve(lastUID)
	}
	for _, kid := range k.kids {
		kid.prepare(count, lastUID)
	}
	k.content = k.needsContent()
}

// span returns the positions [first, end) in uids (the view's UIDs, in
// order) that a prepared key can match at all: all of them, unless the
// key is, or is an AND with, a sequence or UID set, which bounds them.
func (k *searchKey) span(uids []uint32) (first, end int) {
	first, end = 0, len(uids)
	bound := func(kid *searchKey) {
		if len(kid.resolved) == 0 {
			return
		}
		lo, hi := kid.resolved[0].Start, kid.resolved[0].Stop
		for _, rg := range kid.resolved[1:] {
			lo, hi = min(lo, rg.Start), max(hi, rg.Stop)
		}
		switch kid.op {
		case opSeq:
			first, end = max(first, int(lo)-1), min(end, int(hi))
		case opUID:
			a := sort.Search(len(uids), func(i int) bool { return uids[i] >= lo })
			b := sort.Search(len(uids), func(i int) bool { return uids[i] > hi })
			first, end = max(first, a), min(end, b)
		}
	}
	switch k.op {
	case opSeq, opUID:
		bound(k)
	case opAnd:
		for _, kid := range k.kids {
			if kid.op == opSeq || kid.op == opUID {
				bound(kid)
			}
		}
	}
	if first > end {
		first = end
	}
	return first, end
}

// needsContent tells whether a key reads the message itself.
func (k *searchKey) needsContent() bool {
	switch k.op {
	case opSentBefore, opSentOn, opSentSince, opHeader, opAddress, opBody, opText:
		return true
	case opAnd, opOr, opNot:
		for _, c := range k.kids {
			if c.needsContent() {
				return true
			}
		}
	}
	return false
}

func (s *session) cmdSearch() error    { return s.search(false) }
func (s *session) cmdUIDSearch() error { return s.search(true) }

// searchReturn holds ESEARCH's RETURN options (RFC 4731).
type searchReturn struct {
	min, max, all, count bool
}

// search runs SEARCH and UID SEARCH, with ESEARCH's RETURN (RFC 4731).
func (s *session) search(byUID bool) error {
	if err := s.r.SP(); err != nil {
		return err
	}
	var ret *searchReturn
	if s.r.MaybeWord("RETURN") {
		ret = &searchReturn{}
		if err := s.r.SP(); err != nil {
			return err
		}
		err := s.r.List(func() error {
			a, err := s.r.AtomUpper()
			switch {
			case err != nil:
				return err
			case a == "MIN":
				ret.min = true
			case a == "MAX":
				ret.max = true
			case a == "ALL":
				ret.all = true
			case a == "COUNT":
				ret.count = true
			default:
				return bad("unknown SEARCH RETURN option %s", a)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !ret.min && !ret.max && !ret.count {
			ret.all = true // RETURN () is RETURN (ALL)
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	if s.r.MaybeWord("CHARSET") {
		if err := s.r.SP(); err != nil {
			return err
		}
		cs, err := s.r.Astring()
		if err != nil {
			return err
		}
		if !strings.EqualFold(cs, "UTF-8") && !strings.EqualFold(cs, "US-ASCII") {
			s.r.Discard()
			return no("BADCHARSET (US-ASCII UTF-8)", "unsupported charset %s", cs)
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	root := &searchKey{op: opAnd}
	for {
		k, err := s.searchKey(0)
		if err != nil {
			return err
		}
		root.kids = append(root.kids, k)
		if s.r.AtEnd() {
			break
		}
		if err := s.r.SP(); err != nil {
			return err
		}
	}
	hits, err := s.runSearch(root)
	if err != nil {
		return err
	}
	nums := make([]uint32, len(hits))
	for i, t := range hits {
		if byUID {
			nums[i] = t.uid
		} else {
			nums[i] = t.seq
		}
	}
	if ret == nil {
		s.out = append(s.out[:0], "* SEARCH"...)
		for _, n := range nums {
			s.out = strconv.AppendUint(append(s.out, ' '), uint64(n), 10)
		}
		s.out = append(s.out, "\r\n"...)
		s.w.Write(s.out)
		return nil
	}
	s.out = append(s.out[:0], `* ESEARCH (TAG `...)
	s.out = imapwire.AppendQuotedOrLiteral(s.out, s.tag)
	s.out = append(s.out, ')')
	if byUID {
		s.out = append(s.out, " UID"...)
	}
	if len(nums) > 0 && ret.min {
		s.out = strconv.AppendUint(append(s.out, " MIN "...), uint64(nums[0]), 10)
	}
	if len(nums) > 0 && ret.max {
		s.out = strconv.AppendUint(append(s.out, " MAX "...), uint64(nums[len(nums)-1]), 10)
	}
	if ret.count {
		s.out = strconv.AppendInt(append(s.out, " COUNT "...), int64(len(nums)), 10)
	}
	if len(nums) > 0 && ret.all {
		s.out = imapwire.AppendSet(append(s.out, " ALL "...), nums)
	}
	s.out = append(s.out, "\r\n"...)
	s.w.Write(s.out)
	return nil
}

var flagKeys = map[string]struct {
	flag string
	not  bool
}{
	"ANSWERED": {`\Answered`, false}, "DELETED": {`\Deleted`, false}, "DRAFT": {`\Draft`, false},
	"FLAGGED": {`\Flagged`, false}, "SEEN": {`\Seen`, false},
	"UNANSWERED": {`\Answered`, true}, "UNDELETED": {`\Deleted`, true}, "UNDRAFT": {`\Draft`, true},
	"UNFLAGGED": {`\Flagged`, true}, "UNSEEN": {`\Seen`, true},
}

var dateKeys = map[string]searchOp{
	"BEFORE": opBefore, "ON": opOn, "SINCE": opSince,
	"SENTBEFORE": opSentBefore, "SENTON": opSentOn, "SENTSINCE": opSentSince,
}

var addressKeys = map[string]string{"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc"}

// maxSearchDepth bounds nested NOT/OR/parentheses.
const maxSearchDepth = 64

// searchKey reads one search key.
func (s *session) searchKey(depth int) (*searchKey, error) {
	if depth > maxSearchDepth {
		return nil, bad("search keys nested too deeply")
	}
	if s.r.Peek() == '(' {
		k := &searchKey{op: opAnd}
		s.r.Skip(1)
		for {
			kid, err := s.searchKey(depth + 1)
			if err != nil {
				return nil, err
			}
			k.kids = append(k.kids, kid)
			if s.r.Maybe(')') {
				return k, nil
			}
			if err := s.r.SP(); err != nil {
				return nil, err
			}
		}
	}
	if c := s.r.Peek(); c == '*' || c >= '1' && c <= '9' {
		set, err := s.r.SeqSet()
		return &searchKey{op: opSeq, set: set}, err
	}
	word, err := s.r.AtomUpper()
	if err != nil {
		return nil, err
	}
	arg := func() (string, error) {
		if err := s.r.SP(); err != nil {
			return "", err
		}
		return s.r.Astring()
	}
	if f, ok := flagKeys[word]; ok {
		k := &searchKey{op: opFlag, flag: f.flag}
		if f.not {
			k = &searchKey{op: opNot, kids: []*searchKey{k}}
		}
		return k, nil
	}
	if op, ok := dateKeys[word]; ok {
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		d, err := s.r.Date()
		return &searchKey{op: op, date: d}, err
	}
	if field, ok := addressKeys[word]; ok {
		v, err := arg()
		return &searchKey{op: opAddress, field: field, value: v}, err
	}
	switch word {
	case "ALL":
		return &searchKey{op: opAll}, nil
	case "NEW":
		return &searchKey{op: opAnd, kids: []*searchKey{{op: opRecent},
			{op: opNot, kids: []*searchKey{{op: opFlag, flag: `\Seen`}}}}}, nil
	case "OLD":
		return &searchKey{op: opNot, kids: []*searchKey{{op: opRecent}}}, nil
	case "RECENT":
		return &searchKey{op: opRecent}, nil
	case "KEYWORD", "UNKEYWORD":
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		f, err := s.r.Flag(false)
		k := &searchKey{op: opFlag, flag: f}
		if word == "UNKEYWORD" {
			k = &searchKey{op: opNot, kids: []*searchKey{k}}
		}
		return k, err
	case "LARGER", "SMALLER":
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		n, err := s.r.Number64()
		op := opLarger
		if word == "SMALLER" {
			op = opSmaller
		}
		return &searchKey{op: op, n: int64(n)}, err
	case "UID":
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		set, err := s.r.SeqSet()
		return &searchKey{op: opUID, set: set}, err
	case "NOT":
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		kid, err := s.searchKey(depth + 1)
		return &searchKey{op: opNot, kids: []*searchKey{kid}}, err
	case "OR":
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		a, err := s.searchKey(depth + 1)
		if err != nil {
			return nil, err
		}
		if err := s.r.SP(); err != nil {
			return nil, err
		}
		b, err := s.searchKey(depth + 1)
		return &searchKey{op: opOr, kids: []*searchKey{a, b}}, err
	case "SUBJECT":
		v, err := arg()
		return &searchKey{op: opHeader, field: "subject", value: v}, err
	case "HEADER":
		name, err := arg()
		if err != nil {
			return nil, err
		}
		v, err := arg()
		return &searchKey{op: opHeader, field: strings.ToLower(name), value: v}, err
	case "BODY":
		v, err := arg()
		return &searchKey{op: opBody, value: v}, err
	case "TEXT":
		v, err := arg()
		return &searchKey{op: opText, value: v}, err
	}
	return nil, bad("unknown search key %s", word)
}

// runSearch evaluates the key over the client's view and returns the
// matches in order.
func (s *session) runSearch(root *searchKey) ([]target, error) {
	v := s.sel
	var lastUID uint32
	if n := len(v.uids); n > 0 {
		lastUID = v.uids[n-1]
	}
	root.prepare(uint32(len(v.uids)), lastUID)
	if len(root.kids) == 1 {
		root = root.kids[0] // the usual search: one key
	}
	content := root.content
	var hits []target
	infos := make([]msgInfo, 0, fetchChunk)
	m := searchMsg{s: s}
	first, end := root.span(v.uids)
	for start := first; start < end; start += fetchChunk {
		uids := v.uids[start:min(end, start+fetchChunk)]
		infos = v.infos(uids, infos[:0])
		for i := range infos {
			if infos[i].uid == 0 {
				continue
			}
			// One searchMsg for the whole walk: only what a content key
			// read is reset between messages.
			m.seq, m.info = uint32(start+i+1), &infos[i]
			ok, err := m.match(root)
			if content {
				m.release()
			}
			if err != nil {
				return nil, err
			}
			if ok {
				hits = append(hits, target{seq: m.seq, uid: m.info.uid})
			}
		}
	}
	return hits, nil
}

// sameDay compares calendar days, each in its own time zone, as RFC 3501
// asks ("disregarding time and timezone").
func sameDay(t, day time.Time) int {
	y1, m1, d1 := t.Date()
	y2, m2, d2 := day.Date()
	a := y1*10000 + int(m1)*100 + d1
	b := y2*10000 + int(m2)*100 + d2
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
