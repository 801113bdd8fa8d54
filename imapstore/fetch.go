package imapstore

import (
	"strconv"
	"strings"

	"mailcapture/imapwire"
	"mailcapture/mimeinfo"
)

// fetchKind is one kind of FETCH data item.
type fetchKind int

const (
	fetchUID fetchKind = iota
	fetchFlags
	fetchInternalDate
	fetchSize
	fetchEnvelope
	fetchBody          // BODY: the structure without extension data
	fetchBodyStructure // BODYSTRUCTURE
	fetchSection       // BODY[...], BODY.PEEK[...], RFC822, RFC822.HEADER, RFC822.TEXT
	fetchBinary        // BINARY[...], BINARY.PEEK[...] (RFC 3516)
	fetchBinarySize    // BINARY.SIZE[...]
)

// section names part of a message (RFC 3501 6.4.5 section-spec).
type section struct {
	part []int
	// spec is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or
	// "MIME".
	spec   string
	fields []string
}

// fetchItem is one data item of a FETCH.
type fetchItem struct {
	kind    fetchKind
	sec     section
	peek    bool
	partial bool
	offset  uint32
	count   uint32
	// name is how the item is named in the response: "BODY[TEXT]",
	// "RFC822.HEADER", "BINARY[1]"; a partial fetch adds "<offset>".
	name string
}

// setsSeen tells whether fetching the item sets \Seen (RFC 3501 6.4.5).
func (it fetchItem) setsSeen() bool {
	return (it.kind == fetchSection || it.kind == fetchBinary) && !it.peek
}

func (s *session) cmdFetch() error    { return s.fetch(false) }
func (s *session) cmdUIDFetch() error { return s.fetch(true) }

// fetch runs FETCH and UID FETCH (RFC 3501 6.4.5, 6.4.8).
func (s *session) fetch(byUID bool) error {
	if err := s.r.SP(); err != nil {
		return err
	}
	set, err := s.r.SeqSet()
	if err != nil {
		return err
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	items, err := s.fetchItems()
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	if byUID && !hasKind(items, fetchUID) {
		items = append([]fetchItem{{kind: fetchUID}}, items...)
	}
	targets, err := s.resolve(set, byUID)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return nil
	}
	markSeen := false
	for _, it := range items {
		markSeen = markSeen || it.setsSeen()
	}
	var seen map[uint32]bool // messages this FETCH gives \Seen
	if markSeen && !s.sel.readOnly {
		seen, err = s.markSeen(targets)
		if err != nil {
			return err
		}
	}
	return s.writeFetches(targets, items, seen)
}

func hasKind(items []fetchItem, k fetchKind) bool {
	for _, it := range items {
		if it.kind == k {
			return true
		}
	}
	return false
}

// fetchItems reads a FETCH's data items: a macro, one item, or a list.
func (s *session) fetchItems() ([]fetchItem, error) {
	if s.r.Peek() == '(' {
		var items []fetchItem
		err := s.r.List(func() error {
			it, err := s.fetchItem()
			items = append(items, it...)
			return err
		})
		if err == nil && len(items) == 0 {
			err = bad("FETCH needs at least one data item")
		}
		return items, err
	}
	return s.fetchItem()
}

var fetchMacros = map[string][]fetchKind{
	"ALL":  {fetchFlags, fetchInternalDate, fetchSize, fetchEnvelope},
	"FAST": {fetchFlags, fetchInternalDate, fetchSize},
	"FULL": {fetchFlags, fetchInternalDate, fetchSize, fetchEnvelope, fetchBody},
}

func isFetchNameChar(c byte) bool { return imapwire.IsAtomChar(c) && c != '[' && c != '<' }

// fetchItem reads one data item (a macro gives several).
func (s *session) fetchItem() ([]fetchItem, error) {
	name, err := s.r.Chars(isFetchNameChar)
	if err != nil {
		return nil, bad("expected a FETCH data item")
	}
	name = strings.ToUpper(name)
	if kinds, ok := fetchMacros[name]; ok {
		out := make([]fetchItem, len(kinds))
		for i, k := range kinds {
			out[i] = fetchItem{kind: k}
		}
		return out, nil
	}
	simple := map[string]fetchItem{
		"UID": {kind: fetchUID}, "FLAGS": {kind: fetchFlags}, "INTERNALDATE": {kind: fetchInternalDate},
		"RFC822.SIZE": {kind: fetchSize}, "ENVELOPE": {kind: fetchEnvelope}, "BODYSTRUCTURE": {kind: fetchBodyStructure},
		"RFC822":        {kind: fetchSection, name: "RFC822"},
		"RFC822.HEADER": {kind: fetchSection, peek: true, sec: section{spec: "HEADER"}, name: "RFC822.HEADER"},
		"RFC822.TEXT":   {kind: fetchSection, sec: section{spec: "TEXT"}, name: "RFC822.TEXT"},
	}
	if name == "BODY" && s.r.Peek() != '[' {
		return []fetchItem{{kind: fetchBody}}, nil
	}
	if it, ok := simple[name]; ok {
		return []fetchItem{it}, nil
	}
	var it fetchItem
	switch name {
	case "BODY":
		it.kind = fetchSection
	case "BODY.PEEK":
		it.kind, it.peek = fetchSection, true
	case "BINARY":
		it.kind = fetchBinary
	case "BINARY.PEEK":
		it.kind, it.peek = fetchBinary, true
	case "BINARY.SIZE":
		it.kind = fetchBinarySize
	default:
		return nil, bad("unknown FETCH data item %s", name)
	}
	if it.sec, err = s.sectionArg(it.kind != fetchSection); err != nil {
		return nil, err
	}
	if s.r.Peek() == '<' && it.kind != fetchBinarySize {
		s.r.Skip(1)
		off, err := s.r.Number()
		if err != nil {
			return nil, err
		}
		if err := s.r.Byte('.'); err != nil {
			return nil, err
		}
		n, err := s.r.Number()
		if err != nil || n == 0 {
			return nil, bad("bad partial range")
		}
		if err := s.r.Byte('>'); err != nil {
			return nil, err
		}
		it.partial, it.offset, it.count = true, off, n
	}
	base := map[fetchKind]string{fetchSection: "BODY", fetchBinary: "BINARY", fetchBinarySize: "BINARY.SIZE"}[it.kind]
	it.name = base + "[" + it.sec.String() + "]"
	if it.partial {
		it.name += "<" + strconv.FormatUint(uint64(it.offset), 10) + ">"
	}
	return []fetchItem{it}, nil
}

// sectionArg reads "[" section-spec "]"; binary sections are part numbers
// only.
func (s *session) sectionArg(binary bool) (section, error) {
	var sec section
	if err := s.r.Byte('['); err != nil {
		return sec, err
	}
	spec, _ := s.r.Chars(func(c byte) bool { return imapwire.IsAtomChar(c) && c != ']' })
	spec = strings.ToUpper(spec)
	for spec != "" {
		i := strings.IndexByte(spec, '.')
		word := spec
		if i >= 0 {
			word = spec[:i]
		}
		n, err := strconv.Atoi(word)
		if err != nil {
			break
		}
		if n <= 0 {
			return sec, bad("bad section part number")
		}
		sec.part = append(sec.part, n)
		if i < 0 {
			spec = ""
		} else {
			spec = spec[i+1:]
		}
	}
	switch spec {
	case "":
	case "HEADER", "TEXT":
		sec.spec = spec
	case "MIME":
		if len(sec.part) == 0 {
			return sec, bad("MIME needs a part number")
		}
		sec.spec = spec
	case "HEADER.FIELDS", "HEADER.FIELDS.NOT":
		sec.spec = spec
		if err := s.r.SP(); err != nil {
			return sec, err
		}
		err := s.r.List(func() error {
			f, err := s.r.Astring()
			sec.fields = append(sec.fields, strings.ToUpper(f))
			return err
		})
		if err != nil {
			return sec, err
		}
		if len(sec.fields) == 0 {
			return sec, bad("empty header field list")
		}
	default:
		return sec, bad("unknown section %s", spec)
	}
	if binary && sec.spec != "" {
		return sec, bad("BINARY takes part numbers only")
	}
	return sec, s.r.Byte(']')
}

// String writes the section as the response names it.
func (sec section) String() string {
	var b strings.Builder
	for i, n := range sec.part {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.Itoa(n))
	}
	if sec.spec != "" {
		if len(sec.part) > 0 {
			b.WriteByte('.')
		}
		b.WriteString(sec.spec)
	}
	if len(sec.fields) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(sec.fields, " "))
		b.WriteByte(')')
	}
	return b.String()
}

// markSeen gives \Seen to the targets that lack it, before their data is
// written, and returns them: their FETCH shows the new flags.
func (s *session) markSeen(targets []target) (map[uint32]bool, error) {
	var unseen []uint32
	for _, t := range targets {
		if mi, ok := s.sel.info(t.uid); ok && !hasFlag(mi.flags, `\Seen`) {
			unseen = append(unseen, t.uid)
		}
	}
	if len(unseen) == 0 {
		return nil, nil
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	updates, err := s.srv.store.StoreFlags(ctx, s.sel.mb.id, uidRanges(unseen), storeAdd, []string{`\Seen`})
	if err != nil {
		return nil, err
	}
	out := map[uint32]bool{}
	for _, u := range updates {
		out[u.UID] = true
	}
	return out, nil
}

// fetchChunk is how many messages' metadata a FETCH looks up at once.
const fetchChunk = 256

// writeFetches answers each target with its items.
func (s *session) writeFetches(targets []target, items []fetchItem, seen map[uint32]bool) error {
	wantFlags := hasKind(items, fetchFlags)
	infos := make([]msgInfo, 0, min(len(targets), fetchChunk))
	for len(targets) > 0 {
		chunk := targets[:min(len(targets), fetchChunk)]
		targets = targets[len(chunk):]
		infos = s.sel.infos(uidsOf(chunk), infos[:0])
		for i, t := range chunk {
			mi := infos[i]
			if mi.uid == 0 {
				continue
			}
			if err := s.writeFetch(t.seq, mi, items, wantFlags || seen[t.uid]); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeFetch writes one message's FETCH response.
func (s *session) writeFetch(seq uint32, mi msgInfo, items []fetchItem, withFlags bool) error {
	s.announceKeywords(mi.flags)
	s.out = strconv.AppendUint(append(s.out[:0], "* "...), uint64(seq), 10)
	s.out = append(s.out, " FETCH ("...)
	first := true
	sep := func() {
		if !first {
			s.out = append(s.out, ' ')
		}
		first = false
	}
	var structure *mimeinfo.Message
	needStructure := func() (*mimeinfo.Message, error) {
		if structure == nil {
			ctx, cancel := s.opCtx()
			defer cancel()
			var err error
			if structure, err = s.srv.store.Structure(ctx, mi.id); err != nil {
				return nil, err
			}
		}
		return structure, nil
	}
	if hasKind(items, fetchUID) {
		sep()
		s.out = strconv.AppendUint(append(s.out, "UID "...), uint64(mi.uid), 10)
	}
	if withFlags {
		sep()
		s.out = append(s.out, "FLAGS ("...)
		s.out = s.appendFlags(s.out, mi.uid, mi.flags)
		s.out = append(s.out, ')')
	}
	for _, it := range items {
		switch it.kind {
		case fetchUID, fetchFlags:
			continue
		case fetchInternalDate:
			sep()
			s.out = append(s.out, `INTERNALDATE "`...)
			s.out = mi.date.AppendFormat(s.out, imapwire.DateTimeLayout)
			s.out = append(s.out, '"')
		case fetchSize:
			sep()
			s.out = strconv.AppendInt(append(s.out, "RFC822.SIZE "...), mi.size, 10)
		case fetchEnvelope:
			m, err := needStructure()
			if err != nil {
				return err
			}
			sep()
			s.out = appendEnvelope(append(s.out, "ENVELOPE "...), &m.Envelope)
		case fetchBody, fetchBodyStructure:
			m, err := needStructure()
			if err != nil {
				return err
			}
			sep()
			if it.kind == fetchBody {
				s.out = appendBodyStructure(append(s.out, "BODY "...), &m.Root, false)
			} else {
				s.out = appendBodyStructure(append(s.out, "BODYSTRUCTURE "...), &m.Root, true)
			}
		case fetchSection, fetchBinary, fetchBinarySize:
			sep()
			if err := s.writeSection(mi, it, needStructure); err != nil {
				return err
			}
		}
	}
	s.out = append(s.out, ")\r\n"...)
	_, err := s.w.Write(s.out)
	return err
}

// appendFlags writes a message's flags in Dovecot's order (system flags,
// \Recent, keywords).
func (s *session) appendFlags(buf []byte, uid uint32, flags []string) []byte {
	n := 0
	for _, sf := range systemFlags {
		if hasFlag(flags, sf) {
			if n > 0 {
				buf = append(buf, ' ')
			}
			buf = append(buf, sf...)
			n++
		}
	}
	if s.sel.recent[uid] {
		if n > 0 {
			buf = append(buf, ' ')
		}
		buf = append(buf, `\Recent`...)
		n++
	}
	for _, f := range flags {
		if isKeyword(f) {
			if n > 0 {
				buf = append(buf, ' ')
			}
			buf = append(buf, f...)
			n++
		}
	}
	return buf
}

// announceKeywords sends FLAGS before a response that shows a keyword the
// client has not been told of (RFC 3501 7.2.6).
func (s *session) announceKeywords(flags []string) {
	v := s.sel
	for _, f := range flags {
		if isKeyword(f) && !containsFold(v.knownKeywords, f) {
			v.mb.mu.Lock()
			keywords := v.mb.keywords
			v.mb.mu.Unlock()
			if !containsFold(keywords, f) {
				keywords = append(append([]string(nil), keywords...), f)
			}
			// The response being built waits: FLAGS goes out first.
			pending := append([]byte(nil), s.out...)
			s.writeFlags(keywords)
			s.out = append(s.out[:0], pending...)
			return
		}
	}
}

// writeFetchFlags writes an unsolicited or STORE's FETCH of a message's
// flags (with its UID when byUID).
func (s *session) writeFetchFlags(seq, uid uint32, flags []string, byUID bool) {
	s.announceKeywords(flags)
	s.out = strconv.AppendUint(append(s.out[:0], "* "...), uint64(seq), 10)
	s.out = append(s.out, " FETCH ("...)
	if byUID {
		s.out = strconv.AppendUint(append(s.out, "UID "...), uint64(uid), 10)
		s.out = append(s.out, ' ')
	}
	s.out = append(s.out, "FLAGS ("...)
	s.out = s.appendFlags(s.out, uid, flags)
	s.out = append(s.out, "))\r\n"...)
	s.w.Write(s.out)
}
