package imapstore

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/mimeinfo"
	"mailcapture/store"
)

// target is one message a command addresses: its sequence number in the
// client's view and its UID.
type target struct {
	seq uint32
	uid uint32
}

// resolve maps a sequence or UID set onto the messages it names, in the
// client's view ("*" is the client's last message).
func (s *Session) resolve(numSet imap.NumSet) []target {
	sel := s.sel
	sel.state.mu.Lock()
	defer sel.state.mu.Unlock()
	uids := sel.state.uids
	var out []target
	switch set := numSet.(type) {
	case imap.SeqSet:
		last := sel.tracker.EncodeSeqNum(uint32(len(uids)))
		for i := len(uids); last == 0 && i > 0; i-- {
			last = sel.tracker.EncodeSeqNum(uint32(i))
		}
		static := staticSeqSet(set, last)
		for i, uid := range uids {
			seq := sel.tracker.EncodeSeqNum(uint32(i + 1))
			if seq != 0 && static.Contains(seq) {
				out = append(out, target{seq: seq, uid: uid})
			}
		}
	case imap.UIDSet:
		var maxUID uint32
		if len(uids) > 0 {
			maxUID = uids[len(uids)-1]
		}
		static := staticUIDSet(set, maxUID)
		for i, uid := range uids {
			seq := sel.tracker.EncodeSeqNum(uint32(i + 1))
			if seq != 0 && static.Contains(imap.UID(uid)) {
				out = append(out, target{seq: seq, uid: uid})
			}
		}
	}
	return out
}

func staticSeqSet(set imap.SeqSet, last uint32) imap.SeqSet {
	out := make(imap.SeqSet, len(set))
	for i, r := range set {
		if r.Start == 0 {
			r.Start = last
		}
		if r.Stop == 0 {
			r.Stop = last
		}
		if r.Start > r.Stop {
			r.Start, r.Stop = r.Stop, r.Start
		}
		out[i] = r
	}
	return out
}

func staticUIDSet(set imap.UIDSet, maxUID uint32) imap.UIDSet {
	out := make(imap.UIDSet, len(set))
	for i, r := range set {
		if r.Start == 0 {
			r.Start = imap.UID(maxUID)
		}
		if r.Stop == 0 {
			r.Stop = imap.UID(maxUID)
		}
		if r.Start > r.Stop {
			r.Start, r.Stop = r.Stop, r.Start
		}
		out[i] = r
	}
	return out
}

func uidRanges(ts []target) []store.UIDRange {
	var out []store.UIDRange
	for _, t := range ts {
		if n := len(out); n > 0 && out[n-1].Stop+1 == t.uid {
			out[n-1].Stop = t.uid
			continue
		}
		out = append(out, store.UIDRange{Start: t.uid, Stop: t.uid})
	}
	return out
}

// eachMessage calls fn with the metadata of each target still in the
// mailbox, in order, looking them up fetchChunk at a time.
func (s *Session) eachMessage(targets []target, fn func(target, store.Message) error) error {
	msgs := make([]store.Message, 0, min(len(targets), fetchChunk))
	for len(targets) > 0 {
		chunk := targets[:min(len(targets), fetchChunk)]
		targets = targets[len(chunk):]
		var err error
		msgs, err = s.messagesOf(chunk, msgs[:0])
		if err != nil {
			return s.internal("fetch", err)
		}
		for i, t := range chunk {
			if msgs[i].ID == 0 {
				continue // expunged meanwhile
			}
			if err := fn(t, msgs[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// messagesOf appends to into the metadata of the targets, in their order,
// from the selected mailbox's cache; a message expunged meanwhile has ID 0.
func (s *Session) messagesOf(ts []target, into []store.Message) ([]store.Message, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	uids := make([]uint32, len(ts))
	for i, t := range ts {
		uids[i] = t.uid
	}
	return s.b.summaries(ctx, s.sel.mbox.ID, s.sel.state, uids, into)
}

// fetchChunk is how many messages a FETCH looks up in the cache at once:
// a FETCH of a whole mailbox does not copy all of its metadata first.
const fetchChunk = 256

// Fetch writes the asked items of the messages; full bodies stream from
// the stored files, sections are cut by the offsets cached at ingestion.
func (s *Session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	targets := s.resolve(numSet)
	if len(targets) == 0 {
		return nil
	}
	markSeen := false
	for _, bs := range options.BodySection {
		markSeen = markSeen || !bs.Peek
	}
	for _, bs := range options.BinarySection {
		markSeen = markSeen || !bs.Peek
	}
	if markSeen && !s.sel.readOnly {
		ctx, cancel := s.ctx()
		_, err := s.b.Store.StoreFlags(ctx, s.sel.mbox.ID, uidRanges(targets), store.FlagsAdd, []string{string(imap.FlagSeen)})
		cancel()
		if err != nil {
			return s.internal("fetch", err)
		}
	}
	if s.raw != nil && !markSeen && metadataOnly(options) {
		return s.fetchMetadata(w, targets, options)
	}
	return s.eachMessage(targets, func(t target, m store.Message) error {
		return s.fetchOne(w.CreateMessage(t.seq), m, options, markSeen)
	})
}

func (s *Session) fetchOne(rw *imapserver.FetchResponseWriter, m store.Message, options *imap.FetchOptions, markSeen bool) error {
	defer rw.Close()
	if options.UID {
		rw.WriteUID(imap.UID(m.UID))
	}
	if options.Flags || (markSeen && !s.sel.readOnly) {
		rw.WriteFlags(toFlags(m.Flags))
	}
	if options.InternalDate {
		rw.WriteInternalDate(m.InternalDate)
	}
	if options.RFC822Size {
		rw.WriteRFC822Size(m.Size)
	}
	if options.Envelope || options.BodyStructure != nil || len(options.BodySection) > 0 || len(options.BinarySection) > 0 {
		var info *mimeinfo.Message
		if needsStructure(options) {
			ctx, cancel := s.ctx()
			var err error
			info, err = s.b.Store.Structure(ctx, m.ID)
			cancel()
			if err != nil {
				return s.internal("fetch", err)
			}
		}
		if options.Envelope {
			rw.WriteEnvelope(envelope(&info.Envelope))
		}
		if options.BodyStructure != nil {
			rw.WriteBodyStructure(bodyStructure(&info.Root, options.BodyStructure.Extended))
		}
		for _, bs := range options.BodySection {
			if err := s.writeSection(rw, m, info, bs); err != nil {
				return err
			}
		}
		for _, bs := range options.BinarySection {
			// Served undecoded: the part's bytes as stored.
			sec := &imap.FetchItemBodySection{Part: bs.Part, Partial: bs.Partial, Peek: bs.Peek}
			if err := s.writeSection(rw, m, info, sec); err != nil {
				return err
			}
		}
	}
	return nil
}

// needsStructure tells whether a FETCH needs a message's cached structure:
// whole messages (BODY[], RFC822) are served from the file alone.
func needsStructure(options *imap.FetchOptions) bool {
	if options.Envelope || options.BodyStructure != nil {
		return true
	}
	for _, bs := range options.BodySection {
		if !wholeMessage(bs) {
			return true
		}
	}
	for _, bs := range options.BinarySection {
		if len(bs.Part) > 0 {
			return true
		}
	}
	return false
}

// wholeMessage tells whether a section is the whole message.
func wholeMessage(bs *imap.FetchItemBodySection) bool {
	return len(bs.Part) == 0 && bs.Specifier == imap.PartSpecifierNone
}

// Store changes flags and writes the new flags unless SILENT.
func (s *Session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if s.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "mailbox is read-only"}
	}
	targets := s.resolve(numSet)
	if len(targets) == 0 {
		return nil
	}
	op := map[imap.StoreFlagsOp]store.FlagOp{imap.StoreFlagsAdd: store.FlagsAdd, imap.StoreFlagsDel: store.FlagsRemove, imap.StoreFlagsSet: store.FlagsReplace}[flags.Op]
	ctx, cancel := s.ctx()
	defer cancel()
	if _, err := s.b.Store.StoreFlags(ctx, s.sel.mbox.ID, uidRanges(targets), op, fromFlags(flags.Flags)); err != nil {
		return s.internal("store", err)
	}
	if flags.Silent {
		return nil
	}
	msgs, err := s.messagesOf(targets, nil)
	if err != nil {
		return s.internal("store", err)
	}
	for i, t := range targets {
		if m := msgs[i]; m.ID != 0 {
			rw := w.CreateMessage(t.seq)
			rw.WriteFlags(toFlags(m.Flags))
			rw.Close()
		}
	}
	return nil
}

// Expunge removes the \Deleted messages (of uids, for UID EXPUNGE). The
// EXPUNGE responses come from the tracker, which the store fed before
// Expunge returned.
func (s *Session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if s.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "mailbox is read-only"}
	}
	ctx, cancel := s.ctx()
	defer cancel()
	crit := store.Criteria{WithFlags: []string{string(imap.FlagDeleted)}}
	if uids != nil {
		all := s.resolve(*uids)
		crit.UIDs = uidRanges(all)
		if len(all) == 0 {
			return nil
		}
	}
	deleted, err := s.b.Store.Search(ctx, s.sel.mbox.ID, crit)
	if err != nil {
		return s.internal("expunge", err)
	}
	if _, err := s.b.Store.Expunge(ctx, s.sel.mbox.ID, deleted); err != nil {
		return s.internal("expunge", err)
	}
	return nil
}

// Copy copies messages to another mailbox (COPYUID).
func (s *Session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	return s.copyOrMove(numSet, dest, false)
}

// Move moves messages (RFC 6851); the EXPUNGE responses come from the
// tracker.
func (s *Session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	data, err := s.copyOrMove(numSet, dest, true)
	if err != nil || data == nil {
		return err
	}
	return w.WriteCopyData(data)
}

func (s *Session) copyOrMove(numSet imap.NumSet, dest string, move bool) (*imap.CopyData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	if move && s.sel.readOnly {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "mailbox is read-only"}
	}
	dst, err := s.b.Store.MailboxByName(ctx, s.acct.ID, dest)
	if errors.Is(err, store.ErrNotFound) {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: fmt.Sprintf("no mailbox %q", dest)}
	}
	if err != nil {
		return nil, s.internal("copy", err)
	}
	targets := s.resolve(numSet)
	if len(targets) == 0 {
		return nil, nil
	}
	uids := make([]uint32, len(targets))
	for i, t := range targets {
		uids[i] = t.uid
	}
	op := s.b.Store.Copy
	if move {
		op = s.b.Store.Move
	}
	res, err := op(ctx, s.sel.mbox.ID, uids, dst.ID)
	if err != nil {
		return nil, s.internal("copy", err)
	}
	data := &imap.CopyData{UIDValidity: res.DestUIDValidity}
	for i := range res.SourceUIDs {
		data.SourceUIDs.AddNum(imap.UID(res.SourceUIDs[i]))
		data.DestUIDs.AddNum(imap.UID(res.DestUIDs[i]))
	}
	return data, nil
}

// Append stores a message (APPENDUID).
func (s *Session) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	mb, err := s.b.Store.MailboxByName(ctx, s.acct.ID, name)
	if errors.Is(err, store.ErrNotFound) {
		io.Copy(io.Discard, r)
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: fmt.Sprintf("no mailbox %q", name)}
	}
	if err != nil {
		return nil, s.internal("append", err)
	}
	if r.Size() > AppendLimit {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig, Text: "message too big"}
	}
	date := time.Now()
	var flags []string
	if options != nil {
		if !options.Time.IsZero() {
			date = options.Time
		}
		flags = fromFlags(options.Flags)
	}
	ins, err := s.b.Store.Append(ctx, mb.ID, r, flags, date)
	if err != nil {
		return nil, s.internal("append", err)
	}
	return &imap.AppendData{UID: imap.UID(ins.UID), UIDValidity: mb.UIDValidity}, nil
}
