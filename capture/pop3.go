package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/textproto"
	"slices"
	"strings"

	"mailcapture/legacyclient"
	"mailcapture/pop3"
	"mailcapture/store"
)

// maildrop is the legacy POP3 maildrop: number, size and UIDL of each
// message, in the server's order.
type maildrop struct {
	nums  []int
	sizes []int64
	uidls []string
}

// openMaildrop logs in to the legacy POP3 server for the account and reads
// its maildrop. The caller closes the client; the job's end (ctx) closes
// it too, which fails the command in progress.
func (e *Engine) openMaildrop(ctx context.Context, acct store.Account, password string) (*pop3.Client, maildrop, error) {
	c, err := legacyclient.LoginPOP3(ctx, e.POP3, e.credentials(acct, password))
	if err != nil {
		return nil, maildrop{}, err
	}
	context.AfterFunc(ctx, func() { c.Close() })
	md, err := readMaildrop(c)
	if err != nil {
		c.Close()
		return nil, maildrop{}, legacyclient.ClassifyPOP3(err)
	}
	return c, md, nil
}

func readMaildrop(c *pop3.Client) (maildrop, error) {
	var md maildrop
	caps, err := c.Capa()
	if err != nil {
		return md, err
	}
	if _, ok := caps["UIDL"]; !ok && len(caps) > 0 {
		return md, errors.New("the legacy POP3 server does not offer UIDL: its messages cannot be told apart")
	}
	list, err := c.List()
	if err != nil {
		return md, err
	}
	uidls, err := c.UIDL()
	if err != nil {
		return md, err
	}
	if len(list) != len(uidls) {
		return md, fmt.Errorf("%w: LIST has %d messages, UIDL %d", errMailboxChanged, len(list), len(uidls))
	}
	md.nums, md.sizes, md.uidls = make([]int, len(list)), make([]int64, len(list)), make([]string, len(list))
	for i := range list {
		if list[i].Num != uidls[i].Num {
			return md, fmt.Errorf("LIST and UIDL disagree at message %d", i+1)
		}
		md.nums[i], md.sizes[i], md.uidls[i] = list[i].Num, list[i].Size, uidls[i].UIDL
	}
	// A UIDL given twice, found in a sorted copy (a set of 100,000 UIDLs
	// would take three times the memory).
	sorted := slices.Clone(md.uidls)
	slices.Sort(sorted)
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return maildrop{}, fmt.Errorf("the legacy POP3 server gives UIDL %q twice", sorted[i])
		}
	}
	return md, nil
}

// pop3Pass captures a POP3-only legacy maildrop into INBOX: messages are
// told apart by their UIDL, which they keep; what is gone from the legacy
// maildrop is removed locally.
func (e *Engine) pop3Pass(ctx context.Context, acct store.Account, password string) (PassResult, error) {
	var res PassResult
	c, md, err := e.openMaildrop(ctx, acct, password)
	if err != nil {
		return res, err
	}
	defer c.Close()
	res.Folders = 1
	inbox, err := e.Store.MailboxByName(ctx, acct.ID, "INBOX")
	if errors.Is(err, store.ErrNotFound) {
		inbox, err = e.Store.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "INBOX", Subscribed: true, Mirror: true})
		res.FoldersCreated++
	}
	if err != nil {
		return res, err
	}
	stored, err := e.Store.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		return res, err
	}
	have := map[string]bool{}
	for _, m := range stored {
		have[m.POP3UIDL] = true
	}
	inLegacy := map[string]bool{}
	var missing []int
	for i, uidl := range md.uidls {
		inLegacy[uidl] = true
		res.LegacyMessages++
		res.LegacyBytes += md.sizes[i]
		if !have[uidl] {
			missing = append(missing, i)
		}
	}
	var gone []uint32
	for _, m := range stored {
		if m.POP3UIDL != "" && !inLegacy[m.POP3UIDL] {
			gone = append(gone, m.UID)
		}
	}
	if len(gone) > 0 {
		deleted, err := e.Store.Expunge(ctx, inbox.ID, gone)
		if err != nil {
			return res, err
		}
		res.Expunged += len(deleted)
	}
	com := e.newCommitter(ctx)
	defer com.abort()
	batch := e.Store.NewBatch()
	defer func() { batch.Abort() }()
	var pendingBytes int64
	for _, i := range missing {
		r, err := c.Retr(md.nums[i])
		if err != nil {
			return res, legacyclient.ClassifyPOP3(err)
		}
		if err := batch.Add(ctx, store.NewMessage{MailboxID: inbox.ID, POP3UIDL: md.uidls[i]}, r); err != nil {
			return res, fmt.Errorf("store message %s: %w", md.uidls[i], legacyclient.ClassifyPOP3(err))
		}
		pendingBytes += md.sizes[i]
		if batch.Len() >= e.batchMessages() || pendingBytes >= e.batchBytes() {
			if err := com.submit(batch); err != nil {
				return res, err
			}
			batch, pendingBytes = e.Store.NewBatch(), 0
		}
	}
	if err := com.submit(batch); err != nil {
		return res, err
	}
	batch = e.Store.NewBatch()
	added, addedBytes, err := com.wait()
	res.Added, res.AddedBytes = added, addedBytes
	if err != nil {
		return res, err
	}
	c.Quit() // nothing was deleted: QUIT only ends the session politely
	return res, nil
}

// uidlHint is the legacy POP3 maildrop, read beside the first pass's IMAP
// copy of INBOX, so the copies get their UIDLs as they are stored: a
// 100,000-message INBOX is not rewritten afterwards to record them. What
// it cannot tell is mapped after the pass (mapUIDLsIfNeeded).
type uidlHint struct {
	ready chan struct{}
	md    maildrop
	err   error
}

// readUIDLHint starts reading the account's legacy maildrop.
func (e *Engine) readUIDLHint(ctx context.Context, acct store.Account, password string) *uidlHint {
	h := &uidlHint{ready: make(chan struct{})}
	go func() {
		defer close(h.ready)
		c, md, err := e.openMaildrop(ctx, acct, password)
		if err != nil {
			h.err = err
			return
		}
		h.md = md
		c.Quit()
		c.Close()
	}()
	return h
}

// apply gives each missing message the UIDL at its position in the
// maildrop, when the maildrop has as many messages as the IMAP folder
// (count is its SELECT count) and the sizes agree: the order in which
// the legacy server shows one mailbox to both protocols. A maildrop that
// could not be read, or differs, leaves them to mapUIDLsIfNeeded.
func (h *uidlHint) apply(ctx context.Context, missing []legacyMessage, count uint32) {
	if h == nil {
		return
	}
	select {
	case <-h.ready:
	case <-ctx.Done():
		return
	}
	if h.err != nil || len(h.md.uidls) != int(count) {
		return
	}
	for i := range missing {
		k := int(missing[i].seq) - 1
		if k >= 0 && k < len(h.md.uidls) && h.md.sizes[k] == missing[i].size {
			missing[i].pop3UIDL = h.md.uidls[k]
		}
	}
}

// wait waits for the maildrop read to end (it holds a POP3 connection).
func (h *uidlHint) wait() {
	if h != nil {
		<-h.ready
	}
}

// mapUIDLsIfNeeded maps the UIDLs of the legacy POP3 server when the
// IMAP-copied INBOX holds a message without one (a login at the legacy
// POP3 server only when there is something to map).
func (e *Engine) mapUIDLsIfNeeded(ctx context.Context, acct store.Account, password string) error {
	inbox, err := e.Store.MailboxByName(ctx, acct.ID, "INBOX")
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if n, err := e.Store.UnmappedUIDLs(ctx, inbox.ID); err != nil || n == 0 {
		return err
	}
	return e.mapUIDLs(ctx, acct, password)
}

// mapUIDLs gives the messages of the IMAP-copied INBOX the UIDLs the legacy
// POP3 server shows for them, so POP3 clients that leave mail on the server
// download nothing again. A UIDL an earlier pass mapped stays with its
// message; the others are matched by position and size, and where those
// disagree by the Message-ID of the POP3 message's header (TOP), so a pass
// over a maildrop that only grew reads the headers of the new messages
// only.
func (e *Engine) mapUIDLs(ctx context.Context, acct store.Account, password string) error {
	c, md, err := e.openMaildrop(ctx, acct, password)
	if err != nil {
		return err
	}
	defer c.Close()
	inbox, err := e.Store.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		return err
	}
	all, err := e.Store.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		return err
	}
	var local []store.Message
	byMessageID := map[string][]int{}
	byUIDL := map[string]int{}
	for _, m := range all {
		if m.LegacyUID != 0 {
			if m.MessageID != "" {
				byMessageID[m.MessageID] = append(byMessageID[m.MessageID], len(local))
			}
			if m.POP3UIDL != "" {
				byUIDL[m.POP3UIDL] = len(local)
			}
			local = append(local, m)
		}
	}
	want := map[uint32]string{}
	taken := map[int]bool{}
	unmatched := 0
	mapped := make([]bool, len(md.uidls))
	for i := range md.uidls {
		// Mapped by an earlier pass (a UIDL never changes hands).
		if k, ok := byUIDL[md.uidls[i]]; ok && !taken[k] && local[k].Size == md.sizes[i] {
			taken[k], mapped[i] = true, true
		}
	}
	for i := range md.uidls {
		if mapped[i] {
			continue
		}
		j := -1
		if len(md.uidls) == len(local) && !taken[i] && local[i].Size == md.sizes[i] {
			j = i
		} else {
			id, err := topMessageID(c, md.nums[i])
			if err != nil {
				return legacyclient.ClassifyPOP3(err)
			}
			for _, k := range byMessageID[id] {
				if !taken[k] && local[k].Size == md.sizes[i] {
					j = k
					break
				}
			}
		}
		if j < 0 {
			unmatched++
			continue
		}
		taken[j] = true
		if local[j].POP3UIDL != md.uidls[i] {
			want[local[j].UID] = md.uidls[i]
		}
	}
	if unmatched > 0 {
		// More in the maildrop than in the copy: mail that arrived since
		// (the next pass copies and maps it). Otherwise a mismatch.
		level := slog.LevelWarn
		if len(md.uidls) > len(local) {
			level = slog.LevelInfo
		}
		e.log().Log(ctx, level, "legacy POP3 messages match no copied IMAP message yet; their UIDLs are not kept", "account", acct.Name,
			"messages", unmatched, "maildrop", len(md.uidls), "copied", len(local))
	}
	c.Quit()
	return e.Store.SetPOP3UIDLs(ctx, inbox.ID, want)
}

// topMessageID reads the Message-ID from the header of message n.
func topMessageID(c *pop3.Client, n int) (string, error) {
	r, err := c.Top(n, 0)
	if err != nil {
		return "", err
	}
	tp := textproto.NewReader(bufio.NewReader(r))
	h, _ := tp.ReadMIMEHeader()
	var drain [512]byte
	for {
		if _, err := r.Read(drain[:]); err != nil {
			break
		}
	}
	return strings.TrimSpace(h.Get("Message-Id")), nil
}
