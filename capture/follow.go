package capture

import (
	"context"
	"fmt"
	"sort"

	"github.com/emersion/go-imap/v2"

	"mailcapture/store"
)

// Follow copies mail that reached the legacy server after the cut-over
// (senders with a cached old MX): in each folder that mirrors a legacy one,
// legacy messages from the legacy UIDNEXT last synced on are appended with
// fresh local UIDs. Nothing else is mirrored: after the cut-over the local
// mailbox is the truth, and local deletions, moves and flag changes stand.
func (e *Engine) Follow(ctx context.Context, account, password string) (PassResult, error) {
	var res PassResult
	acct, err := e.Store.Account(ctx, account)
	if err != nil {
		return res, fmt.Errorf("follow %s: %w", account, err)
	}
	conn, err := dialIMAP(ctx, e.IMAP, e.credentials(acct, password))
	if err != nil {
		return res, fmt.Errorf("follow %s: %w", account, err)
	}
	defer conn.Close()
	if err := e.follow(ctx, conn, acct, &res); err != nil {
		return res, fmt.Errorf("follow %s: %w", account, conn.classify(ctx, err))
	}
	conn.Logout().Wait()
	return res, nil
}

func (e *Engine) follow(ctx context.Context, conn *imapConn, acct store.Account, res *PassResult) error {
	folders, _, _, _, err := listFolders(conn)
	if err != nil {
		return err
	}
	for _, f := range folders {
		if hasAttr(f.attrs, imap.MailboxAttrNoSelect) || hasAttr(f.attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		mbox, err := e.Store.MailboxByName(ctx, acct.ID, f.name)
		if err != nil {
			continue // a folder made on the legacy server after the cut-over is not followed
		}
		if err := e.followFolder(ctx, conn, acct, f, mbox, res); err != nil {
			return fmt.Errorf("folder %q: %w", f.name, err)
		}
	}
	return nil
}

func (e *Engine) followFolder(ctx context.Context, conn *imapConn, acct store.Account, f legacyFolder, mbox store.Mailbox, res *PassResult) error {
	sel, err := conn.Select(f.name, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return fmt.Errorf("select: %w", err)
	}
	defer func() { conn.Unselect().Wait() }()
	if sel.UIDValidity != mbox.LegacyUIDValidity {
		e.log().Warn("legacy folder recreated after the cut-over; not followed", "account", acct.Name, "folder", f.name)
		return nil
	}
	from := max(mbox.LegacyUIDNext, 1)
	if uint32(sel.UIDNext) <= from || sel.NumMessages == 0 {
		return nil
	}
	var set imap.UIDSet
	set.AddRange(imap.UID(from), 0)
	bufs, err := conn.Fetch(set, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true, InternalDate: true}).Collect()
	if err != nil {
		return fmt.Errorf("fetch metadata: %w", err)
	}
	var fresh []legacyMessage
	for _, b := range bufs {
		if uint32(b.UID) >= from { // "n:*" also answers the last message when n is beyond it
			fresh = append(fresh, legacyMessage{seq: b.SeqNum, uid: uint32(b.UID), flags: normalizeFlags(b.Flags), size: b.RFC822Size, date: b.InternalDate})
		}
	}
	sort.Slice(fresh, func(i, j int) bool { return fresh[i].seq < fresh[j].seq })
	if len(fresh) > 0 {
		if err := e.copyMessages(ctx, conn, mbox, fresh, true, res); err != nil {
			return err
		}
	}
	return e.Store.SetLegacyUIDNext(ctx, mbox.ID, uint32(sel.UIDNext))
}

// LegacyNews counts, per mirrored folder, the legacy messages a follow
// sync has not copied yet (legacy UIDs from the UIDNEXT last synced on),
// asking the legacy server with STATUS only: nothing is read or written
// anywhere. The retirement check uses it.
func (e *Engine) LegacyNews(ctx context.Context, account, password string) (map[string]uint32, error) {
	acct, err := e.Store.Account(ctx, account)
	if err != nil {
		return nil, fmt.Errorf("legacy news of %s: %w", account, err)
	}
	conn, err := dialIMAP(ctx, e.IMAP, e.credentials(acct, password))
	if err != nil {
		return nil, fmt.Errorf("legacy news of %s: %w", account, err)
	}
	defer conn.Close()
	folders, _, _, _, err := listFolders(conn)
	if err != nil {
		return nil, fmt.Errorf("legacy news of %s: %w", account, conn.classify(ctx, err))
	}
	news := map[string]uint32{}
	for _, f := range folders {
		if hasAttr(f.attrs, imap.MailboxAttrNoSelect) || hasAttr(f.attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		mbox, err := e.Store.MailboxByName(ctx, acct.ID, f.name)
		if err != nil {
			continue // not mirrored: not followed either
		}
		st, err := conn.Status(f.name, &imap.StatusOptions{UIDNext: true, UIDValidity: true, NumMessages: true}).Wait()
		if err != nil {
			return nil, fmt.Errorf("legacy news of %s: status %q: %w", account, f.name, conn.classify(ctx, err))
		}
		from := max(mbox.LegacyUIDNext, 1)
		if st.UIDValidity != mbox.LegacyUIDValidity || st.NumMessages == nil || *st.NumMessages == 0 || uint32(st.UIDNext) <= from {
			continue
		}
		news[f.name] = uint32(st.UIDNext) - from
	}
	conn.Logout().Wait()
	return news, nil
}
