package imapstore

import (
	"strings"

	"mailcapture/store"
)

const (
	storeAdd     = store.FlagsAdd
	storeRemove  = store.FlagsRemove
	storeReplace = store.FlagsReplace
)

// flagsArg validates flags a client sets: system flags must be ones RFC
// 3501 defines (canonical spelling given back), keywords atoms. \Recent
// cannot be set (RFC 3501 2.3.2): it is dropped.
func flagsArg(flags []string) ([]string, error) {
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		if !strings.HasPrefix(f, `\`) {
			out = append(out, f)
			continue
		}
		if strings.EqualFold(f, `\Recent`) {
			continue
		}
		known := false
		for _, sf := range systemFlags {
			if strings.EqualFold(f, sf) {
				out = append(out, sf)
				known = true
				break
			}
		}
		if !known {
			return nil, bad("invalid system flag %s", f)
		}
	}
	return out, nil
}

func (s *session) cmdStore() error    { return s.storeFlags(false) }
func (s *session) cmdUIDStore() error { return s.storeFlags(true) }

// storeFlags runs STORE and UID STORE (RFC 3501 6.4.6). Unless .SILENT,
// each message whose flags changed gets one FETCH with its new flags (with
// its UID for UID STORE); the change reaches the other sessions of the
// mailbox. In an examined mailbox it changes nothing and says so.
func (s *session) storeFlags(byUID bool) error {
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
	item, err := s.r.AtomUpper()
	if err != nil {
		return err
	}
	op := storeReplace
	switch {
	case strings.HasPrefix(item, "+"):
		op, item = storeAdd, item[1:]
	case strings.HasPrefix(item, "-"):
		op, item = storeRemove, item[1:]
	}
	silent := strings.HasSuffix(item, ".SILENT")
	item = strings.TrimSuffix(item, ".SILENT")
	if item != "FLAGS" {
		return bad("unknown STORE item %s", item)
	}
	if err := s.r.SP(); err != nil {
		return err
	}
	raw, err := s.r.FlagList(false)
	if err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	flags, err := flagsArg(raw)
	if err != nil {
		return err
	}
	targets, err := s.resolve(set, byUID)
	if err != nil {
		return err
	}
	if s.sel.readOnly {
		s.okText = "Store ignored with read-only mailbox" // as Dovecot answers
		return nil
	}
	var live []uint32
	for _, t := range targets {
		if s.sel.stored(t.uid) {
			live = append(live, t.uid)
		}
	}
	changed := map[uint32]bool{}
	if len(live) > 0 && (len(flags) > 0 || op == storeReplace) {
		ctx, cancel := s.opCtx()
		defer cancel()
		updates, err := s.srv.store.StoreFlags(ctx, s.sel.mb.id, uidRanges(live), op, flags)
		if err != nil {
			return err
		}
		for _, u := range updates {
			changed[u.UID] = true
		}
	}
	// The messages whose flags changed, as Dovecot answers.
	if !silent {
		for _, t := range targets {
			if !changed[t.uid] {
				continue
			}
			if mi, ok := s.sel.info(t.uid); ok {
				s.writeFetchFlags(t.seq, t.uid, mi.flags, byUID)
			}
		}
	}
	if len(live) < len(targets) {
		// RFC 9051 7.1: some named messages were expunged by another
		// session; the client hears of it with its next command.
		s.okCode, s.okText = "EXPUNGEISSUED", "Some of the requested messages no longer exist"
	}
	return nil
}

// stored tells whether a message of the view is still in the store.
func (v *view) stored(uid uint32) bool {
	v.mb.mu.Lock()
	defer v.mb.mu.Unlock()
	return v.mb.find(uid) >= 0
}

// uidRanges compresses ascending UIDs into ranges.
func uidRanges(uids []uint32) []store.UIDRange {
	var out []store.UIDRange
	for _, u := range uids {
		if n := len(out); n > 0 && out[n-1].Stop+1 == u {
			out[n-1].Stop = u
			continue
		}
		out = append(out, store.UIDRange{Start: u, Stop: u})
	}
	return out
}
