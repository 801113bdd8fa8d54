package imapstore

import (
	"context"
	"net/mail"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/store"
)

// Search runs SEARCH / UID SEARCH, with ESEARCH's MIN, MAX, COUNT and ALL.
func (s *Session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	crit, sent := s.criteria(criteria)
	uids, err := s.b.Store.Search(ctx, s.sel.mbox.ID, crit)
	if err != nil {
		return nil, s.internal("search", err)
	}
	if len(sent) > 0 {
		if uids, err = s.filterSent(ctx, uids, sent); err != nil {
			return nil, s.internal("search", err)
		}
	}
	// Back to the client's view: sequence numbers where asked.
	var set imap.UIDSet
	for _, u := range uids {
		set.AddNum(imap.UID(u))
	}
	var hits []target
	if len(uids) > 0 {
		hits = s.resolve(set)
	}
	data := &imap.SearchData{}
	var seqs imap.SeqSet
	var uidSet imap.UIDSet
	for _, h := range hits {
		n := h.seq
		if kind == imapserver.NumKindUID {
			n = h.uid
			uidSet.AddNum(imap.UID(n))
		} else {
			seqs.AddNum(n)
		}
		if data.Min == 0 || n < data.Min {
			data.Min = n
		}
		data.Max = max(data.Max, n)
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uidSet
	} else {
		data.All = seqs
	}
	return data, nil
}

// sentBounds are SENTSINCE/SENTBEFORE keys, checked on the Date header.
type sentBounds struct{ since, before time.Time }

// criteria maps IMAP search keys onto the store's; keys on the Date header
// are returned apart. IMAP date keys ignore time and zone: days are taken
// in UTC.
func (s *Session) criteria(c *imap.SearchCriteria) (store.Criteria, []sentBounds) {
	var out store.Criteria
	var sent []sentBounds
	for _, set := range c.SeqNum {
		ranges := uidRanges(s.resolve(set))
		if ranges == nil {
			ranges = []store.UIDRange{} // matches nothing
		}
		out.Not = append(out.Not, store.Criteria{Not: []store.Criteria{{UIDs: ranges}}})
	}
	for _, set := range c.UID {
		ranges := uidRanges(s.resolve(set))
		if ranges == nil {
			ranges = []store.UIDRange{}
		}
		out.Not = append(out.Not, store.Criteria{Not: []store.Criteria{{UIDs: ranges}}})
	}
	if !c.Since.IsZero() {
		out.Since = day(c.Since)
	}
	if !c.Before.IsZero() {
		out.Before = day(c.Before)
	}
	if !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		sent = append(sent, sentBounds{since: c.SentSince, before: c.SentBefore})
	}
	for _, h := range c.Header {
		out.Header = append(out.Header, store.HeaderMatch{Name: h.Key, Value: h.Value})
	}
	out.Body, out.Text = c.Body, c.Text
	out.WithFlags, out.WithoutFlags = fromFlags(c.Flag), fromFlags(c.NotFlag)
	out.Larger, out.Smaller = c.Larger, c.Smaller
	for i := range c.Not {
		sub, subSent := s.criteria(&c.Not[i])
		if len(subSent) > 0 {
			continue // NOT SENTxxx: not supported inside NOT; the key is ignored
		}
		out.Not = append(out.Not, sub)
	}
	for _, pair := range c.Or {
		a, _ := s.criteria(&pair[0])
		b, _ := s.criteria(&pair[1])
		out.Or = append(out.Or, [2]store.Criteria{a, b})
	}
	return out, sent
}

func day(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// filterSent keeps the messages whose Date header is within the bounds.
func (s *Session) filterSent(ctx context.Context, uids []uint32, bounds []sentBounds) ([]uint32, error) {
	ts := make([]target, len(uids))
	for i, u := range uids {
		ts[i] = target{uid: u}
	}
	msgs, err := s.messagesOf(ts, nil)
	if err != nil {
		return nil, err
	}
	var kept []uint32
	for _, m := range msgs {
		if m.ID == 0 {
			continue
		}
		info, err := s.b.Store.Structure(ctx, m.ID)
		if err != nil {
			return nil, err
		}
		d, err := mail.ParseDate(info.Envelope.Date)
		if err != nil || !withinDays(d, bounds) {
			continue
		}
		kept = append(kept, m.UID)
	}
	return kept, nil
}

// withinDays checks a Date header against SENTSINCE/SENTBEFORE (days).
func withinDays(d time.Time, bounds []sentBounds) bool {
	for _, b := range bounds {
		if !b.since.IsZero() && day(d).Before(day(b.since)) {
			return false
		}
		if !b.before.IsZero() && !day(d).Before(day(b.before)) {
			return false
		}
	}
	return true
}
