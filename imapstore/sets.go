package imapstore

import (
	"slices"

	"mailcapture/imapwire"
)

// target is a message a command names: its number in the client's view
// and its UID.
type target struct {
	seq uint32
	uid uint32
}

// resolve maps a sequence set (or, byUID, a UID set) onto the messages of
// the client's view, in ascending order. A sequence number beyond the
// view is refused (RFC 9051 6.4.4 lets a server say BAD); UIDs that name
// nothing are skipped (RFC 3501 6.4.8). "*" is the last message, or with
// UIDs the highest UID in the view.
func (s *session) resolve(set imapwire.NumSet, byUID bool) ([]target, error) {
	v := s.sel
	n := uint32(len(v.uids))
	var out []target
	if !byUID {
		res := set.Resolve(n)
		for _, rg := range res {
			if rg.Stop > n || rg.Start == 0 {
				if n == 0 && isStar(set) {
					return nil, nil
				}
				return nil, bad("invalid message sequence number (the mailbox has %d messages)", n)
			}
		}
		if len(res) == 1 {
			for seq := res[0].Start; seq <= res[0].Stop; seq++ {
				out = append(out, target{seq: seq, uid: v.uids[seq-1]})
			}
			return out, nil
		}
		for i, uid := range v.uids {
			if res.Contains(uint32(i + 1)) {
				out = append(out, target{seq: uint32(i + 1), uid: uid})
			}
		}
		return out, nil
	}
	var last uint32
	if n > 0 {
		last = v.uids[n-1]
	}
	res := set.Resolve(last)
	if len(res) == 1 {
		lo, _ := slices.BinarySearch(v.uids, res[0].Start)
		for i := lo; i < len(v.uids) && v.uids[i] <= res[0].Stop; i++ {
			out = append(out, target{seq: uint32(i + 1), uid: v.uids[i]})
		}
		return out, nil
	}
	for i, uid := range v.uids {
		if res.Contains(uid) {
			out = append(out, target{seq: uint32(i + 1), uid: uid})
		}
	}
	return out, nil
}

// isStar tells whether a set is only "*" forms.
func isStar(set imapwire.NumSet) bool {
	for _, rg := range set {
		if rg.Start != 0 || rg.Stop != 0 {
			return false
		}
	}
	return true
}

func uidsOf(ts []target) []uint32 {
	out := make([]uint32, len(ts))
	for i, t := range ts {
		out[i] = t.uid
	}
	return out
}
