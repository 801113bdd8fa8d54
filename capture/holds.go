package capture

import (
	"context"
	"fmt"

	"github.com/emersion/go-imap/v2"

	"mailcapture/addresses"
	"mailcapture/legacyclient"
	"mailcapture/store"
)

// InboxSearch looks into accounts' legacy INBOXes (the relay queue asks
// it whether an interrupted delivery went through). It logs in with the
// master user, or else with the account's own password from Passwords.
type InboxSearch struct {
	Endpoint legacyclient.Endpoint
	// Master, if set, is used for every account.
	Master *legacyclient.MasterLogin
	// Passwords, if set, returns an account's password (the credential
	// vault); false when it has none.
	Passwords func(ctx context.Context, account string) (string, bool)
	// Store and Naming find the account of a recipient address and the
	// name the legacy server knows it by; without Store the address
	// without its extension is the login name.
	Store  *store.Store
	Naming addresses.Naming
}

// Holds reports whether the legacy INBOX of the account rcpt is for holds
// a message whose header field contains value (IMAP SEARCH HEADER,
// read-only).
func (s InboxSearch) Holds(ctx context.Context, rcpt, field, value string) (bool, error) {
	account, login := s.Naming.Base(rcpt), s.Naming.Base(rcpt)
	if s.Store != nil {
		if name, err := s.Naming.Account(account); err == nil {
			if a, err := s.Store.Account(ctx, name); err == nil {
				account, login = a.Name, s.Naming.LegacyLogin(a.LegacyLogin, a.Name)
			}
		}
	}
	var cred legacyclient.Credentials
	switch {
	case s.Master != nil && s.Master.Username != "":
		cred = s.Master.ActingFor(login)
	case s.Passwords != nil:
		password, ok := s.Passwords(ctx, account)
		if !ok {
			return false, fmt.Errorf("search legacy inbox of %s: no master user and no kept password", account)
		}
		cred = legacyclient.User(login, password)
	default:
		return false, fmt.Errorf("search legacy inbox of %s: no master user and no credential vault", account)
	}
	c, err := dialIMAP(ctx, s.Endpoint, cred)
	if err != nil {
		return false, fmt.Errorf("search legacy inbox of %s: %w", account, err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return false, fmt.Errorf("search legacy inbox of %s: select: %w", account, c.classify(ctx, err))
	}
	criteria := &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: field, Value: value}}}
	data, err := c.UIDSearch(criteria, nil).Wait()
	if err != nil {
		return false, fmt.Errorf("search legacy inbox of %s: %w", account, c.classify(ctx, err))
	}
	c.Logout().Wait()
	return len(data.AllUIDs()) > 0, nil
}
