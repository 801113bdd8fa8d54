// Package pop3store serves POP3 maildrops from the store: the INBOX of a
// captured account, with its legacy UIDLs, locked for one session at a
// time, deletions applied at QUIT.
package pop3store

import (
	"context"
	"fmt"
	"io"
	"sync"

	"mailcapture/pop3"
	"mailcapture/store"
)

// Backend serves the maildrops of captured accounts from the store.
type Backend struct {
	Store *store.Store

	mu     sync.Mutex
	locked map[int64]bool
}

// Open locks a captured account's maildrop and lists it; a maildrop
// another session holds is pop3.ErrInUse. The caller has checked the
// account's password (the login policy).
func (b *Backend) Open(ctx context.Context, acct store.Account) (pop3.Maildrop, error) {
	b.mu.Lock()
	if b.locked == nil {
		b.locked = map[int64]bool{}
	}
	if b.locked[acct.ID] {
		b.mu.Unlock()
		return nil, pop3.ErrInUse
	}
	b.locked[acct.ID] = true
	b.mu.Unlock()
	inbox, entries, err := b.Store.Maildrop(ctx, acct.ID)
	if err != nil {
		b.unlock(acct.ID)
		return nil, fmt.Errorf("maildrop of %s: %w", acct.Name, err)
	}
	return &maildrop{backend: b, accountID: acct.ID, inbox: inbox, entries: entries}, nil
}

func (b *Backend) unlock(accountID int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.locked, accountID)
}

type maildrop struct {
	backend   *Backend
	accountID int64
	inbox     store.Mailbox
	entries   []store.MaildropEntry
	closeOnce sync.Once
}

func (m *maildrop) Messages() []pop3.MessageInfo {
	out := make([]pop3.MessageInfo, len(m.entries))
	for i, e := range m.entries {
		out[i] = pop3.MessageInfo{Size: e.Size, UIDL: e.UIDL}
	}
	return out
}

func (m *maildrop) Open(_ context.Context, i int) (io.ReadCloser, error) {
	return m.backend.Store.OpenBody(m.entries[i].ID)
}

func (m *maildrop) Commit(ctx context.Context, deleted []int) error {
	uids := make([]uint32, len(deleted))
	for k, i := range deleted {
		uids[k] = m.entries[i].UID
	}
	_, err := m.backend.Store.Expunge(ctx, m.inbox.ID, uids)
	return err
}

func (m *maildrop) Close() {
	m.closeOnce.Do(func() { m.backend.unlock(m.accountID) })
}
