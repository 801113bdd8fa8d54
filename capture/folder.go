package capture

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/store"
)

// legacyMessage is one message's metadata on the legacy server.
type legacyMessage struct {
	seq   uint32
	uid   uint32
	flags []string
	size  int64
	date  time.Time
	// pop3UIDL is the legacy POP3 server's UIDL for the message, when
	// the maildrop read beside the first pass tells it (see uidlHint).
	pop3UIDL string
}

// syncFolder makes one local mailbox equal to its legacy folder: creates
// it (or recreates it when UIDVALIDITY changed), removes what was
// expunged, updates flags, copies what is new, and raises UIDNEXT to the
// legacy UIDNEXT. A folder the legacy server reports unchanged since its
// last sync (same UIDVALIDITY, UIDNEXT, message count and CONDSTORE
// HIGHESTMODSEQ) whose local mirror is as that sync left it is not
// compared message by message.
func (e *Engine) syncFolder(ctx context.Context, conn *imapConn, plan *passPlan, f legacyFolder, res *PassResult) error {
	condStore := !e.NoCondStore && conn.Caps().Has(imap.CapCondStore)
	sel, err := conn.Select(f.name, &imap.SelectOptions{ReadOnly: true, CondStore: condStore}).Wait()
	if err != nil {
		return fmt.Errorf("select: %w", err)
	}
	defer func() { conn.Unselect().Wait() }()
	if !condStore {
		// Servers with CONDSTORE may report HIGHESTMODSEQ unasked.
		sel.HighestModSeq = 0
	}

	mbox, err := e.localMailbox(ctx, plan, f, sel.UIDValidity, res)
	if err != nil {
		return err
	}
	if mbox.LegacySyncState != "" {
		st, err := e.Store.Totals(ctx, mbox.ID)
		if err != nil {
			return err
		}
		if state, ok := syncState(sel, st); ok && state == mbox.LegacySyncState {
			res.FoldersUnchanged++
			res.LegacyMessages += int64(sel.NumMessages)
			res.LegacyBytes += st.Size
			return e.recordFolder(ctx, mbox, f, sel)
		}
	}
	var hint *uidlHint
	if f.name == "INBOX" {
		hint = plan.uidls
	}
	if err := e.compareAndCopy(ctx, conn, mbox, sel, hint, res); err != nil {
		return err
	}
	return e.finishFolder(ctx, mbox, f, sel)
}

// syncState describes a legacy folder as SELECT reported it and its local
// mirror, for the next pass to compare with; ok is false when it cannot
// tell changes apart (no HIGHESTMODSEQ) or the mirror does not hold as
// many messages as the legacy folder.
func syncState(sel *imap.SelectData, local store.MailboxStatus) (string, bool) {
	if sel.HighestModSeq == 0 || local.Messages != sel.NumMessages {
		return "", false
	}
	return fmt.Sprintf("legacy uidvalidity=%d uidnext=%d messages=%d modseq=%d; local messages=%d uidnext=%d",
		sel.UIDValidity, sel.UIDNext, sel.NumMessages, sel.HighestModSeq, local.Messages, local.UIDNext), true
}

// recordFolder records the legacy folder's special use, subscription and
// UIDNEXT (local UIDNEXT raised to it), each only when it differs from what
// mbox (read before the sync) holds.
func (e *Engine) recordFolder(ctx context.Context, mbox store.Mailbox, f legacyFolder, sel *imap.SelectData) error {
	uidnext := uint32(sel.UIDNext)
	if strings.Join(mbox.SpecialUse, " ") != strings.Join(f.specialUse, " ") || mbox.Subscribed != f.subscribed ||
		mbox.UIDNext < uidnext || mbox.LegacyUIDNext < uidnext {
		return e.Store.UpdateMailbox(ctx, mbox.ID, f.specialUse, f.subscribed, uidnext)
	}
	return nil
}

// finishFolder records what a finished sync of the folder saw
// (recordFolder) and the state the next pass compares with.
func (e *Engine) finishFolder(ctx context.Context, mbox store.Mailbox, f legacyFolder, sel *imap.SelectData) error {
	if err := e.recordFolder(ctx, mbox, f, sel); err != nil {
		return err
	}
	if sel.HighestModSeq == 0 && mbox.LegacySyncState == "" {
		return nil // nothing to record, nothing to clear
	}
	st, err := e.Store.Totals(ctx, mbox.ID)
	if err != nil {
		return err
	}
	state, _ := syncState(sel, st)
	if state == mbox.LegacySyncState {
		return nil
	}
	return e.Store.SetLegacySyncState(ctx, mbox.ID, state)
}

// compareAndCopy compares the legacy folder's messages with the local
// mirror's and applies the differences: expunges, flag changes, new
// messages. It walks the folder a window of messages at a time (by
// sequence number, so by ascending legacy UID), each window against the
// local copies whose legacy UIDs fall in its span; one committer takes
// the new messages of every window.
func (e *Engine) compareAndCopy(ctx context.Context, conn *imapConn, mbox store.Mailbox, sel *imap.SelectData, hint *uidlHint, res *PassResult) error {
	return e.withCommitter(ctx, res, func(com *committer) error {
		return e.compareWindows(ctx, conn, com, mbox, sel, hint, res)
	})
}

// compareWindows is compareAndCopy's walk over the windows.
func (e *Engine) compareWindows(ctx context.Context, conn *imapConn, com *committer, mbox store.Mailbox, sel *imap.SelectData, hint *uidlHint, res *PassResult) (err error) {
	var prevUID uint32 // the highest legacy UID of the windows done
	window := uint32(e.metadataWindow())
	for lo := uint32(1); lo <= max(sel.NumMessages, 1); lo += window {
		hi := min(lo+window-1, sel.NumMessages)
		var legacy []legacyMessage
		if sel.NumMessages > 0 {
			if legacy, err = fetchMetadataRange(conn, lo, hi); err != nil {
				return err
			}
		}
		// The last window also takes every local copy above it.
		top := uint32(0xffffffff)
		if hi < sel.NumMessages {
			top = legacy[len(legacy)-1].uid
		}
		if err := e.compareWindow(ctx, conn, com, mbox, legacy, prevUID+1, top, sel.NumMessages, hint, res); err != nil {
			return err
		}
		if top == 0xffffffff {
			break
		}
		prevUID = top
	}
	return nil
}

// compareWindow applies the differences between legacy messages and the
// local copies with legacy UIDs from lo to hi.
func (e *Engine) compareWindow(ctx context.Context, conn *imapConn, com *committer, mbox store.Mailbox, legacy []legacyMessage, lo, hi, count uint32, hint *uidlHint, res *PassResult) error {
	for _, m := range legacy {
		res.LegacyMessages++
		res.LegacyBytes += m.size
	}
	stored, err := e.Store.MessagesByLegacyUID(ctx, mbox.ID, lo, hi)
	if err != nil {
		return err
	}
	byLegacyUID := make(map[uint32]store.Message, len(stored))
	for _, m := range stored {
		byLegacyUID[m.LegacyUID] = m
	}
	inLegacy := make(map[uint32]bool, len(legacy))
	var missing []legacyMessage
	flagGroups := map[string][]uint32{} // wanted flags -> local UIDs
	for _, m := range legacy {
		inLegacy[m.uid] = true
		have, ok := byLegacyUID[m.uid]
		if !ok {
			missing = append(missing, m)
			continue
		}
		if want := strings.Join(m.flags, " "); want != strings.Join(have.Flags, " ") {
			flagGroups[want] = append(flagGroups[want], have.UID)
		}
	}
	var gone []uint32
	for _, m := range stored {
		if !inLegacy[m.LegacyUID] {
			gone = append(gone, m.UID)
		}
	}
	if len(gone) > 0 {
		deleted, err := e.Store.Expunge(ctx, mbox.ID, gone)
		if err != nil {
			return err
		}
		res.Expunged += len(deleted)
	}
	for want, uids := range flagGroups {
		ranges := uidRanges(uids)
		for len(ranges) > 0 {
			n := min(len(ranges), 400) // bounded statement size
			updates, err := e.Store.StoreFlags(ctx, mbox.ID, ranges[:n], store.FlagsReplace, splitFlags(want))
			if err != nil {
				return err
			}
			res.FlagsChanged += len(updates)
			ranges = ranges[n:]
		}
	}
	if len(missing) > 0 {
		hint.apply(ctx, missing, count)
		return e.copyInto(ctx, conn, com, mbox, missing, false)
	}
	return nil
}

// localMailbox finds or creates the local mirror of a legacy folder.
func (e *Engine) localMailbox(ctx context.Context, plan *passPlan, f legacyFolder, uidvalidity uint32, res *PassResult) (store.Mailbox, error) {
	plan.mu.Lock()
	defer plan.mu.Unlock()
	acct, local, orphans := plan.acct, plan.local, plan.orphans
	mbox, ok := local[f.name]
	if ok && mbox.LegacyUIDValidity == uidvalidity {
		return mbox, nil
	}
	if ok {
		// The legacy folder was recreated: its UIDs mean other messages
		// now. Copy it again from scratch.
		e.log().Info("legacy UIDVALIDITY changed; copying the folder again", "account", acct.Name, "folder", f.name,
			"old", mbox.LegacyUIDValidity, "new", uidvalidity)
		if err := e.Store.DeleteMailbox(ctx, mbox.ID); err != nil {
			return mbox, err
		}
		res.FoldersRecopied++
	} else if old, renamed := orphans[uidvalidity]; renamed {
		// Same UIDVALIDITY under a new name: the folder was renamed.
		if err := e.Store.RenameMailbox(ctx, acct.ID, old.Name, f.name, ""); err != nil {
			return mbox, err
		}
		delete(orphans, uidvalidity)
		res.FoldersRenamed++
		m, err := e.Store.MailboxByName(ctx, acct.ID, f.name)
		local[f.name] = m
		return m, err
	} else {
		res.FoldersCreated++
	}
	m, err := e.Store.CreateMailbox(ctx, acct.ID, store.MailboxSpec{
		Name: f.name, UIDValidity: uidvalidity, UIDNext: 1, SpecialUse: f.specialUse,
		Subscribed: f.subscribed, LegacyUIDValidity: uidvalidity, Mirror: true,
	})
	if err != nil {
		return m, err
	}
	local[f.name] = m
	return m, nil
}

// fetchMetadata reads UID, flags, size and internal date of every message
// of the selected folder (no bodies).
func fetchMetadata(conn *imapConn, count uint32) ([]legacyMessage, error) {
	if count == 0 {
		return nil, nil
	}
	return fetchMetadataRange(conn, 1, count)
}

// fetchMetadataRange is fetchMetadata for the messages lo to hi (sequence
// numbers), which must all be there.
func fetchMetadataRange(conn *imapConn, lo, hi uint32) ([]legacyMessage, error) {
	count := hi - lo + 1
	var all imap.SeqSet
	all.AddRange(lo, hi)
	bufs, err := conn.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true, InternalDate: true}).Collect()
	if err != nil {
		return nil, fmt.Errorf("fetch metadata: %w", err)
	}
	out := make([]legacyMessage, 0, len(bufs))
	for _, b := range bufs {
		if b.UID == 0 {
			return nil, fmt.Errorf("fetch metadata: the legacy server sent message %d without its UID", b.SeqNum)
		}
		out = append(out, legacyMessage{seq: b.SeqNum, uid: uint32(b.UID), flags: normalizeFlags(b.Flags), size: b.RFC822Size, date: b.InternalDate})
	}
	if uint32(len(out)) != count {
		return nil, fmt.Errorf("%w: FETCH %d:%d returned %d messages", errMailboxChanged, lo, hi, len(out))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out, nil
}

// copyMessages fetches the bodies of msgs by sequence-number ranges (with
// UID among the items, checked against the metadata) and streams them into
// store batches. The number received is checked against the number asked.
// Copies keep the legacy UIDs, or get fresh local ones when fresh is set
// (follow syncs after the cut-over).
func (e *Engine) copyMessages(ctx context.Context, conn *imapConn, mbox store.Mailbox, msgs []legacyMessage, fresh bool, res *PassResult) error {
	return e.withCommitter(ctx, res, func(com *committer) error {
		return e.copyInto(ctx, conn, com, mbox, msgs, fresh)
	})
}

// withCommitter runs fn with a background committer and waits for it.
// Batches commit while the next one streams in, across chunks: the next
// FETCH goes out without waiting for the last batch of the previous one
// to be durable. Commits are not cancelled: when ctx ends (shutdown),
// the messages streamed in whole so far are still committed. Whatever was
// committed is counted in res, error or not; fn's error comes first.
func (e *Engine) withCommitter(ctx context.Context, res *PassResult, fn func(*committer) error) error {
	com := e.newCommitter(context.WithoutCancel(ctx))
	err := fn(com)
	added, addedBytes, cerr := com.wait()
	res.Added += added
	res.AddedBytes += addedBytes
	if err == nil {
		err = cerr
	}
	return err
}

// copyInto fetches the bodies of msgs, a FETCH per chunk, into com's
// batches.
func (e *Engine) copyInto(ctx context.Context, conn *imapConn, com *committer, mbox store.Mailbox, msgs []legacyMessage, fresh bool) error {
	chunk := e.fetchChunk()
	for lo := 0; lo < len(msgs); lo += chunk {
		part := msgs[lo:min(lo+chunk, len(msgs))]
		if err := e.copyChunk(ctx, conn, com, mbox, part, fresh); err != nil {
			return err
		}
	}
	return nil
}

// copyChunk fetches the bodies of msgs with one FETCH and hands them to
// com in batches.
func (e *Engine) copyChunk(ctx context.Context, conn *imapConn, com *committer, mbox store.Mailbox, msgs []legacyMessage, fresh bool) error {
	bySeq := make(map[uint32]*legacyMessage, len(msgs))
	var seqs imap.SeqSet
	for i := range msgs {
		bySeq[msgs[i].seq] = &msgs[i]
		seqs.AddNum(msgs[i].seq)
	}
	fetch := conn.Fetch(seqs, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	broken := false
	defer func() { endFetch(conn, fetch, broken) }()
	batch := e.Store.NewBatch()
	defer func() { batch.Abort() }()
	received := 0
	var pendingBytes int64
	for {
		msg := fetch.Next()
		if msg == nil {
			break
		}
		want, ok := bySeq[msg.SeqNum]
		if !ok {
			// An answer we did not ask for (a unilateral FETCH): skip it.
			drain(msg)
			continue
		}
		var gotUID uint32
		added := false
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch v := item.(type) {
			case imapclient.FetchItemDataUID:
				gotUID = uint32(v.UID)
			case imapclient.FetchItemDataBodySection:
				if added || v.Literal == nil {
					continue
				}
				uid := want.uid
				if fresh {
					uid = 0 // the next local UID
				}
				lit := &literalReader{r: v.Literal, left: v.Literal.Size()}
				err := batch.Add(ctx, store.NewMessage{MailboxID: mbox.ID, UID: uid, LegacyUID: want.uid,
					InternalDate: want.date, Flags: want.flags, POP3UIDL: want.pop3UIDL}, lit)
				broken = lit.err != nil && lit.err != io.EOF
				if err != nil && ctx.Err() != nil {
					return e.finishCancelled(ctx, com, &batch)
				}
				if err != nil && broken {
					return e.keepWhole(com, &batch, fmt.Errorf("store message UID %d: %w", want.uid, err))
				}
				if err != nil {
					return fmt.Errorf("store message UID %d: %w", want.uid, err)
				}
				added = true
				if e.afterAdd != nil {
					e.afterAdd()
				}
			}
		}
		if gotUID != 0 && gotUID != want.uid {
			return fmt.Errorf("%w: message %d has UID %d, expected %d", errMailboxChanged, msg.SeqNum, gotUID, want.uid)
		}
		if !added {
			return fmt.Errorf("legacy server sent message %d (UID %d) without its body", msg.SeqNum, want.uid)
		}
		received++
		pendingBytes += want.size
		if batch.Len() >= e.batchMessages() || pendingBytes >= e.batchBytes() {
			if err := com.submit(batch); err != nil {
				return err
			}
			batch, pendingBytes = e.Store.NewBatch(), 0
		}
	}
	if err := fetch.Close(); err != nil {
		if ctx.Err() != nil {
			return e.finishCancelled(ctx, com, &batch)
		}
		return e.keepWhole(com, &batch, fmt.Errorf("fetch bodies: %w", err))
	}
	if received != len(msgs) {
		return fmt.Errorf("%w: asked for %d bodies, received %d", errMailboxChanged, len(msgs), received)
	}
	err := com.submit(batch)
	batch = e.Store.NewBatch() // the committer owns the submitted one
	return err
}

// literalReader reads a body literal exactly: an end before its announced
// size is an error (a broken connection never yields a short message),
// and after any error it is never read again (the client library's reader
// goes on with the connection then).
type literalReader struct {
	r    io.Reader
	left int64
	err  error
}

func (l *literalReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if err == io.EOF && l.left > 0 {
		err = fmt.Errorf("literal cut %d bytes short: %w", l.left, io.ErrUnexpectedEOF)
	}
	if err != nil {
		l.err = err
	}
	return n, err
}

// keepWhole commits the messages streamed in whole before the legacy
// connection failed (each one's size and UID were checked as it came), so
// that the retry resumes after them instead of fetching them again; a
// connection that always breaks after so many bytes cannot keep a folder
// from being copied. It returns err.
func (e *Engine) keepWhole(com *committer, batch **store.Batch, err error) error {
	if cerr := e.commitStreamed(com, batch); cerr != nil {
		return fmt.Errorf("%w (and keeping the messages before it: %v)", err, cerr)
	}
	return err
}

// finishCancelled commits what was streamed in whole before ctx ended
// (the batch in progress and those queued), then returns ctx's error.
func (e *Engine) finishCancelled(ctx context.Context, com *committer, batch **store.Batch) error {
	if err := e.commitStreamed(com, batch); err != nil {
		return err
	}
	return ctx.Err()
}

// commitStreamed hands the batch in progress to the committer and waits
// for everything queued to be committed (copyMessages counts it).
func (e *Engine) commitStreamed(com *committer, batch **store.Batch) error {
	b := *batch
	*batch = e.Store.NewBatch() // the committer owns b now
	if err := com.submit(b); err != nil {
		return err
	}
	_, _, err := com.wait()
	return err
}

// committer commits batches one after another in the background, so the
// next batch streams in while the previous one is made durable.
type committer struct {
	e          *Engine
	ctx        context.Context
	queue      chan *store.Batch
	done       chan struct{}
	err        error // set by the goroutine before done closes
	added      int
	addedBytes int64
	waited     bool
}

func (e *Engine) newCommitter(ctx context.Context) *committer {
	c := &committer{e: e, ctx: ctx, queue: make(chan *store.Batch, 1), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *committer) run() {
	defer close(c.done)
	for b := range c.queue {
		if c.err != nil {
			b.Abort()
			continue
		}
		inserted, err := b.Commit(c.ctx)
		if err != nil {
			c.err = err
			continue
		}
		n, size := 0, int64(0)
		for _, in := range inserted {
			if !in.Duplicate {
				n++
				size += in.Size
			}
		}
		c.added += n
		c.addedBytes += size
		c.e.observer().Copied(n, size)
		if c.e.afterCommit != nil {
			c.e.hookMu.Lock()
			c.e.afterCommit()
			c.e.hookMu.Unlock()
		}
	}
}

// submit queues a batch (an empty one is dropped); it blocks while the
// previous batch is still committing. The batch belongs to the committer
// from then on.
func (c *committer) submit(b *store.Batch) error {
	if b.Len() == 0 {
		b.Abort()
		return nil
	}
	select {
	case c.queue <- b:
		return nil
	case <-c.done:
		b.Abort()
		return c.err
	case <-c.ctx.Done():
		b.Abort()
		return c.ctx.Err()
	}
}

// wait commits what is queued and returns the totals and the first error.
func (c *committer) wait() (int, int64, error) {
	if !c.waited {
		c.waited = true
		close(c.queue)
	}
	<-c.done
	return c.added, c.addedBytes, c.err
}

// abort stops the committer after what is queued (for error paths).
func (c *committer) abort() {
	c.wait()
}

// endFetch releases a FETCH. After a body failed to read (the connection
// broke), the client library must not be asked to drain the answer: its
// reader goroutine has moved on, and a second read of the literal would
// race with it. The connection is closed instead.
func endFetch(conn *imapConn, fetch *imapclient.FetchCommand, broken bool) {
	if broken {
		conn.Close()
		return
	}
	fetch.Close()
}

func drain(msg *imapclient.FetchMessageData) {
	for item := msg.Next(); item != nil; item = msg.Next() {
		if b, ok := item.(imapclient.FetchItemDataBodySection); ok && b.Literal != nil {
			var buf [4096]byte
			for {
				if _, err := b.Literal.Read(buf[:]); err != nil {
					break
				}
			}
		}
	}
}

// normalizeFlags sorts flags and drops \Recent, as the store keeps them.
func normalizeFlags(flags []imap.Flag) []string {
	out := make([]string, 0, len(flags))
	seen := map[string]bool{}
	for _, f := range flags {
		s := string(f)
		lower := strings.ToLower(s)
		if lower == `\recent` || seen[lower] {
			continue
		}
		seen[lower] = true
		out = append(out, canonicalFlag(s))
	}
	sort.Strings(out)
	return out
}

func canonicalFlag(f string) string {
	switch strings.ToLower(f) {
	case `\seen`:
		return `\Seen`
	case `\answered`:
		return `\Answered`
	case `\flagged`:
		return `\Flagged`
	case `\deleted`:
		return `\Deleted`
	case `\draft`:
		return `\Draft`
	}
	return f
}

func splitFlags(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, " ")
}

// uidRanges turns UIDs into ranges of consecutive runs.
func uidRanges(uids []uint32) []store.UIDRange {
	sort.Slice(uids, func(i, j int) bool { return uids[i] < uids[j] })
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
