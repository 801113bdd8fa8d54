package capture

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailcapture/legacyclient"
	"mailcapture/store"
)

// Verification is the outcome of comparing the store with the legacy
// server: per folder the message count, the UID set, every size, and the
// SHA-256 of a sample of bodies re-fetched from the legacy server against
// the SHA-256 recorded while each body streamed in.
type Verification struct {
	Folders  int
	Messages int
	Sampled  int
	// Mismatches describes every disagreement; empty means the store is
	// an exact copy.
	Mismatches []string
}

// OK tells whether the store agrees with the legacy server.
func (v Verification) OK() bool { return len(v.Mismatches) == 0 }

func (v *Verification) mismatch(format string, args ...any) {
	v.Mismatches = append(v.Mismatches, fmt.Sprintf(format, args...))
}

// Verify compares the account's store with the legacy server. Local copies
// whose size or hash disagree are removed, so the next pass copies them
// again; a verification that found mismatches never lets a cut-over start.
func (e *Engine) Verify(ctx context.Context, account, password string) (Verification, error) {
	sess := &legacySession{engine: e, password: password}
	defer sess.close()
	return e.verifyOn(ctx, sess, account)
}

// verifyOn runs Verify over the session's legacy connection.
func (e *Engine) verifyOn(ctx context.Context, sess *legacySession, account string) (Verification, error) {
	var v Verification
	acct, err := e.Store.Account(ctx, account)
	if err != nil {
		return v, fmt.Errorf("verify %s: %w", account, err)
	}
	sess.acct = acct
	if e.IMAP.Address == "" {
		if err := e.verifyPOP3(ctx, acct, sess.password, &v); err != nil {
			return v, fmt.Errorf("verify %s: %w", account, err)
		}
		return v, nil
	}
	conn, err := sess.get(ctx)
	if err != nil {
		return v, fmt.Errorf("verify %s: %w", account, err)
	}
	if err := e.verify(ctx, conn, acct, &v); err != nil {
		err = conn.classify(ctx, err)
		sess.drop()
		return v, fmt.Errorf("verify %s: %w", account, err)
	}
	return v, nil
}

func (e *Engine) verify(ctx context.Context, conn *imapConn, acct store.Account, v *Verification) error {
	folders, _, _, _, err := listFolders(conn)
	if err != nil {
		return err
	}
	localList, err := e.Store.Mailboxes(ctx, acct.ID)
	if err != nil {
		return err
	}
	local := map[string]store.Mailbox{}
	for _, m := range localList {
		local[m.Name] = m
	}
	seen := map[string]bool{}
	for _, f := range folders {
		seen[f.name] = true
		if hasAttr(f.attrs, imap.MailboxAttrNoSelect) || hasAttr(f.attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		v.Folders++
		mbox, ok := local[f.name]
		if !ok {
			v.mismatch("folder %q: missing locally", f.name)
			continue
		}
		if err := e.verifyFolder(ctx, conn, f, mbox, v); err != nil {
			return fmt.Errorf("folder %q: %w", f.name, err)
		}
	}
	for _, m := range localList {
		if !seen[m.Name] && m.LegacyUIDValidity != 0 {
			v.mismatch("folder %q: gone from the legacy server", m.Name)
		}
	}
	return nil
}

func (e *Engine) verifyFolder(ctx context.Context, conn *imapConn, f legacyFolder, mbox store.Mailbox, v *Verification) error {
	sel, err := conn.Select(f.name, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return fmt.Errorf("select: %w", err)
	}
	defer func() { conn.Unselect().Wait() }()
	if sel.UIDValidity != mbox.LegacyUIDValidity || mbox.UIDValidity != sel.UIDValidity {
		v.mismatch("folder %q: UIDVALIDITY %d locally, %d on the legacy server", f.name, mbox.UIDValidity, sel.UIDValidity)
		return nil
	}
	if mbox.UIDNext < uint32(sel.UIDNext) {
		v.mismatch("folder %q: UIDNEXT %d locally is below the legacy %d", f.name, mbox.UIDNext, sel.UIDNext)
	}
	legacy, err := fetchMetadata(conn, sel.NumMessages)
	if err != nil {
		return err
	}
	stored, err := e.Store.Messages(ctx, mbox.ID, store.AllUIDs)
	if err != nil {
		return err
	}
	byUID := map[uint32]store.Message{}
	for _, m := range stored {
		if m.LegacyUID != 0 {
			byUID[m.LegacyUID] = m
		}
	}
	if len(byUID) != len(legacy) {
		v.mismatch("folder %q: %d messages locally, %d on the legacy server", f.name, len(byUID), len(legacy))
	}
	var bad []uint32
	var candidates []legacyMessage
	for _, m := range legacy {
		v.Messages++
		have, ok := byUID[m.uid]
		switch {
		case !ok:
			v.mismatch("folder %q: UID %d missing locally", f.name, m.uid)
		case have.UID != m.uid:
			v.mismatch("folder %q: legacy UID %d stored as UID %d", f.name, m.uid, have.UID)
		case have.Size != m.size:
			v.mismatch("folder %q: UID %d has %d bytes locally, %d on the legacy server", f.name, m.uid, have.Size, m.size)
			bad = append(bad, have.UID)
		default:
			candidates = append(candidates, m)
		}
		delete(byUID, m.uid)
	}
	for uid := range byUID {
		v.mismatch("folder %q: UID %d is no longer on the legacy server", f.name, uid)
	}
	sample := pickSample(candidates, e.verifySample())
	if len(sample) > 0 {
		sums, err := fetchHashes(conn, sample)
		if err != nil {
			return err
		}
		for _, m := range sample {
			v.Sampled++
			local := stored[indexOfUID(stored, m.uid)]
			onDisk, err := e.hashStored(local.ID)
			if err != nil {
				return err
			}
			switch {
			case sums[m.uid] != local.SHA256:
				v.mismatch("folder %q: UID %d differs from the legacy body (SHA-256)", f.name, m.uid)
				bad = append(bad, local.UID)
			case onDisk != local.SHA256:
				v.mismatch("folder %q: UID %d: the stored file no longer matches its SHA-256", f.name, m.uid)
				bad = append(bad, local.UID)
			}
		}
	}
	if len(bad) > 0 {
		// Remove the bad copies: the next pass fetches them again.
		if _, err := e.Store.Expunge(ctx, mbox.ID, bad); err != nil {
			return err
		}
	}
	return nil
}

// hashStored hashes a stored body as it is on disk now.
func (e *Engine) hashStored(id int64) ([32]byte, error) {
	var sum [32]byte
	f, err := e.Store.OpenBody(id)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

func indexOfUID(msgs []store.Message, uid uint32) int {
	lo, hi := 0, len(msgs)
	for lo < hi {
		mid := (lo + hi) / 2
		if msgs[mid].UID < uid {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// pickSample takes the first, the last and random others, up to n.
func pickSample(msgs []legacyMessage, n int) []legacyMessage {
	if len(msgs) <= n {
		return msgs
	}
	picked := map[int]bool{0: true, len(msgs) - 1: true}
	for len(picked) < n {
		picked[rand.IntN(len(msgs))] = true
	}
	out := make([]legacyMessage, 0, n)
	for i := range msgs {
		if picked[i] {
			out = append(out, msgs[i])
		}
	}
	return out
}

// fetchHashes re-fetches bodies by sequence number and hashes them.
func fetchHashes(conn *imapConn, msgs []legacyMessage) (map[uint32][32]byte, error) {
	var seqs imap.SeqSet
	bySeq := map[uint32]uint32{}
	for _, m := range msgs {
		seqs.AddNum(m.seq)
		bySeq[m.seq] = m.uid
	}
	fetch := conn.Fetch(seqs, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	broken, closed := false, false
	defer func() {
		if !closed {
			endFetch(conn, fetch, broken)
		}
	}()
	out := map[uint32][32]byte{}
	for msg := fetch.Next(); msg != nil; msg = fetch.Next() {
		uid, ok := bySeq[msg.SeqNum]
		if !ok {
			drain(msg)
			continue
		}
		var gotUID uint32
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				gotUID = uint32(it.UID)
			case imapclient.FetchItemDataBodySection:
				if it.Literal == nil {
					continue
				}
				h := sha256.New()
				if _, err := io.Copy(h, it.Literal); err != nil {
					broken = true
					return nil, err
				}
				var sum [32]byte
				h.Sum(sum[:0])
				out[uid] = sum
			}
		}
		if gotUID != 0 && gotUID != uid {
			return nil, fmt.Errorf("%w: message %d has UID %d, expected %d", errMailboxChanged, msg.SeqNum, gotUID, uid)
		}
	}
	closed = true
	if err := fetch.Close(); err != nil {
		return nil, fmt.Errorf("fetch bodies: %w", err)
	}
	if len(out) != len(msgs) {
		return nil, fmt.Errorf("%w: asked for %d bodies, received %d", errMailboxChanged, len(msgs), len(out))
	}
	return out, nil
}

// Convergence reports a finished Converge.
type Convergence struct {
	Passes       []PassResult
	Verification Verification
}

// ErrNotConverged means every pass of a convergence attempt found
// something to do.
var ErrNotConverged = errors.New("not converged")

// Converge runs sync passes until one finds nothing to do, then verifies.
// A verification mismatch is repaired by the next pass and reported (log
// and the account's last error). It returns once the store is verified to
// be an exact copy: the account is then ready for cut-over.
func (e *Engine) Converge(ctx context.Context, account, password string, maxPasses int) (Convergence, error) {
	var c Convergence
	sess := &legacySession{engine: e, password: password}
	defer sess.close()
	for len(c.Passes) < maxPasses {
		res, err := e.passOn(ctx, sess, account)
		if err != nil {
			return c, err
		}
		c.Passes = append(c.Passes, res)
		if res.Changed() {
			continue
		}
		v, err := e.verifyOn(ctx, sess, account)
		if errors.Is(err, errMailboxChanged) {
			continue
		}
		if err != nil {
			return c, err
		}
		c.Verification = v
		if v.OK() {
			return c, nil
		}
		e.observer().VerificationMismatches(len(v.Mismatches))
		msg := "verification found " + strings.Join(v.Mismatches, "; ")
		e.log().Warn("capture verification mismatch; repairing", "account", account, "mismatches", len(v.Mismatches), "first", v.Mismatches[0])
		if err := e.Store.RecordSync(ctx, account, time.Time{}, msg); err != nil {
			return c, err
		}
	}
	return c, fmt.Errorf("capture %s: %w after %d passes", account, ErrNotConverged, maxPasses)
}

// verifyPOP3 compares a POP3-captured INBOX with the legacy maildrop: the
// UIDL set, every size, and the SHA-256 of a sample of re-read bodies.
func (e *Engine) verifyPOP3(ctx context.Context, acct store.Account, password string, v *Verification) error {
	c, md, err := e.openMaildrop(ctx, acct, password)
	if err != nil {
		return err
	}
	defer c.Close()
	v.Folders = 1
	inbox, err := e.Store.MailboxByName(ctx, acct.ID, "INBOX")
	if err != nil {
		v.mismatch("INBOX missing locally")
		return nil
	}
	stored, err := e.Store.Messages(ctx, inbox.ID, store.AllUIDs)
	if err != nil {
		return err
	}
	byUIDL := map[string]store.Message{}
	for _, m := range stored {
		byUIDL[m.POP3UIDL] = m
	}
	var candidates []int
	var bad []uint32
	for i, uidl := range md.uidls {
		v.Messages++
		m, ok := byUIDL[uidl]
		switch {
		case !ok:
			v.mismatch("INBOX: UIDL %s missing locally", uidl)
		case m.Size != md.sizes[i]:
			v.mismatch("INBOX: UIDL %s has %d bytes locally, %d on the legacy server", uidl, m.Size, md.sizes[i])
			bad = append(bad, m.UID)
		default:
			candidates = append(candidates, i)
		}
		delete(byUIDL, uidl)
	}
	for uidl := range byUIDL {
		v.mismatch("INBOX: UIDL %s is no longer on the legacy server", uidl)
	}
	sample := make([]legacyMessage, 0, len(candidates))
	for _, i := range candidates {
		sample = append(sample, legacyMessage{seq: uint32(i)})
	}
	for _, s := range pickSample(sample, e.verifySample()) {
		i := int(s.seq)
		local := stored[indexOfUIDL(stored, md.uidls[i])]
		r, err := c.Retr(md.nums[i])
		if err != nil {
			return legacyclient.ClassifyPOP3(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return legacyclient.ClassifyPOP3(err)
		}
		var sum [32]byte
		h.Sum(sum[:0])
		onDisk, err := e.hashStored(local.ID)
		if err != nil {
			return err
		}
		v.Sampled++
		if sum != local.SHA256 || onDisk != local.SHA256 {
			v.mismatch("INBOX: UIDL %s differs from the legacy body (SHA-256)", md.uidls[i])
			bad = append(bad, local.UID)
		}
	}
	c.Quit()
	if len(bad) > 0 {
		if _, err := e.Store.Expunge(ctx, inbox.ID, bad); err != nil {
			return err
		}
	}
	return nil
}

func indexOfUIDL(msgs []store.Message, uidl string) int {
	for i, m := range msgs {
		if m.POP3UIDL == uidl {
			return i
		}
	}
	return -1
}
