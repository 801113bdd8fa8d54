package imapstore

import (
	"slices"
	"sort"
	"strconv"
)

// view is a session's selected mailbox as its client knows it: sequence
// number n is uids[n-1]. Changes reach it as queued updates, applied when
// the session may tell its client (sync): until then an expunged message
// keeps its number and stays readable (gone holds its metadata, its body
// is pinned), as RFC 3501 7.4.1 and RFC 2180 4.1.3 describe.
type view struct {
	mb       *mailbox
	readOnly bool

	// Owned by the session.
	uids   []uint32
	recent map[uint32]bool
	// knownKeywords are the keywords the client was told of in FLAGS.
	knownKeywords []string
	existsSent    int
	recentSent    int

	// Under mb.mu.
	pending []update
	gone    map[uint32]msgInfo
	notify  chan struct{} // signalled when an update is queued
}

// queue adds an update; called with mb.mu held.
func (v *view) queue(u update) {
	v.pending = append(v.pending, u)
	select {
	case v.notify <- struct{}{}:
	default:
	}
}

// shows tells whether uid is in the client's view, or will be once the
// queued updates are applied. Called with mb.mu held.
func (v *view) shows(uid uint32) bool {
	if _, ok := slices.BinarySearch(v.uids, uid); ok {
		return true
	}
	for _, u := range v.pending {
		if u.kind == updAdded {
			if _, ok := slices.BinarySearch(u.uids, uid); ok {
				return true
			}
		}
	}
	return false
}

// seqOf returns the sequence number of uid in the client's view, or 0.
func (v *view) seqOf(uid uint32) uint32 {
	i, ok := slices.BinarySearch(v.uids, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// info returns a message's metadata: current, or as it was when it was
// expunged if the client has not been told yet.
func (v *view) info(uid uint32) (msgInfo, bool) {
	m := v.mb
	m.mu.Lock()
	defer m.mu.Unlock()
	return v.infoLocked(uid)
}

func (v *view) infoLocked(uid uint32) (msgInfo, bool) {
	if i := v.mb.find(uid); i >= 0 {
		return v.mb.msgs[i], true
	}
	g, ok := v.gone[uid]
	return g, ok
}

// infos appends the metadata of uids (which ascend) to into; a message
// unknown to the store and the view (it cannot happen while the view
// shows it) gets uid 0.
func (v *view) infos(uids []uint32, into []msgInfo) []msgInfo {
	m := v.mb
	m.mu.Lock()
	defer m.mu.Unlock()
	j := 0
	if len(uids) > 0 {
		// m.msgs is in UID order: start where the first UID would be, so a
		// walk over a big mailbox in chunks stays linear.
		j = sort.Search(len(m.msgs), func(i int) bool { return m.msgs[i].uid >= uids[0] })
	}
	for _, u := range uids {
		for j < len(m.msgs) && m.msgs[j].uid < u {
			j++
		}
		if j < len(m.msgs) && m.msgs[j].uid == u {
			into = append(into, m.msgs[j])
			continue
		}
		if g, ok := v.gone[u]; ok {
			into = append(into, g)
			continue
		}
		into = append(into, msgInfo{})
	}
	return into
}

// sync tells the client what changed since it last heard: new messages
// (EXISTS, RECENT), flag changes (FETCH), new keywords (FLAGS), and, when
// allowed, expunges (EXPUNGE). An expunge held back (during FETCH, STORE
// and SEARCH, RFC 3501 7.4.1) stays queued, before anything that came
// after it.
func (s *session) sync(allowExpunge bool) {
	v := s.sel
	if v == nil {
		return
	}
	m := v.mb
	m.mu.Lock()
	ups := v.pending
	v.pending = nil
	keywords := m.keywords
	m.mu.Unlock()
	if len(keywords) != len(v.knownKeywords) {
		s.writeFlags(keywords)
	}
	var held []update
	var unpin []int64
	// Flag changes are told once per message, with its latest flags,
	// after the count changes.
	var flagged map[uint32][]string
	for _, u := range ups {
		switch u.kind {
		case updAdded:
			// The store's change hook reads v.uids under m.mu (shows):
			// the session changes it under m.mu too.
			m.mu.Lock()
			v.uids = append(v.uids, u.uids...)
			m.mu.Unlock()
			if u.recent && len(u.uids) > 0 {
				for _, uid := range u.uids {
					v.recent[uid] = true
				}
				s.srv.noteRecent(m.id, u.uids[len(u.uids)-1]+1)
			}
		case updExpunged:
			if !allowExpunge {
				held = append(held, u)
				continue
			}
			s.writeExists()
			for _, uid := range u.uids {
				seq := v.seqOf(uid)
				if seq == 0 {
					continue
				}
				m.mu.Lock()
				v.uids = slices.Delete(v.uids, int(seq-1), int(seq))
				m.mu.Unlock()
				delete(v.recent, uid)
				s.out = strconv.AppendUint(append(s.out[:0], "* "...), uint64(seq), 10)
				s.out = append(s.out, " EXPUNGE\r\n"...)
				s.w.Write(s.out)
				v.existsSent--
			}
			m.mu.Lock()
			for _, uid := range u.uids {
				if g, ok := v.gone[uid]; ok {
					unpin = append(unpin, g.id)
					delete(v.gone, uid)
				}
			}
			m.mu.Unlock()
		case updFlags:
			if flagged == nil {
				flagged = map[uint32][]string{}
			}
			if u.own {
				// The session's STORE or FETCH answered it; an earlier
				// change by another session is overtaken.
				delete(flagged, u.uid)
				continue
			}
			flagged[u.uid] = u.flags
		}
	}
	if len(flagged) > 0 {
		s.writeExists()
		uids := make([]uint32, 0, len(flagged))
		for uid := range flagged {
			uids = append(uids, uid)
		}
		slices.Sort(uids)
		for _, uid := range uids {
			if seq := v.seqOf(uid); seq != 0 {
				s.writeFetchFlags(seq, uid, flagged[uid], false)
			}
		}
	}
	if len(unpin) > 0 {
		s.srv.store.UnpinBodies(unpin)
	}
	if len(held) > 0 {
		m.mu.Lock()
		v.pending = append(held, v.pending...)
		m.mu.Unlock()
	}
	s.writeExists()
}

// writeExists announces the message count if it changed, and the number
// of \Recent messages if that changed too.
func (s *session) writeExists() {
	v := s.sel
	if len(v.uids) == v.existsSent && len(v.recent) == v.recentSent {
		return
	}
	s.out = s.out[:0]
	if len(v.uids) != v.existsSent {
		v.existsSent = len(v.uids)
		s.out = strconv.AppendUint(append(s.out, "* "...), uint64(len(v.uids)), 10)
		s.out = append(s.out, " EXISTS\r\n"...)
	}
	if len(v.recent) != v.recentSent {
		v.recentSent = len(v.recent)
		s.out = strconv.AppendUint(append(s.out, "* "...), uint64(len(v.recent)), 10)
		s.out = append(s.out, " RECENT\r\n"...)
	}
	s.w.Write(s.out)
}

// releaseView drops a view: its pins go, it leaves the mailbox.
func (s *session) releaseView() {
	v := s.sel
	if v == nil {
		return
	}
	s.sel = nil
	m := v.mb
	m.mu.Lock()
	m.views = slices.DeleteFunc(m.views, func(x *view) bool { return x == v })
	var unpin []int64
	for _, g := range v.gone {
		unpin = append(unpin, g.id)
	}
	v.gone = nil
	v.pending = nil
	m.mu.Unlock()
	if len(unpin) > 0 {
		s.srv.store.UnpinBodies(unpin)
	}
	s.srv.release(m)
}
