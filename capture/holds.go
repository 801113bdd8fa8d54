package capture

import (
	"context"
	"fmt"

	"github.com/emersion/go-imap/v2"

	"mailcapture/legacyclient"
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
}

// Holds reports whether account's legacy INBOX holds a message whose
// header field contains value (IMAP SEARCH HEADER, read-only).
func (s InboxSearch) Holds(ctx context.Context, account, field, value string) (bool, error) {
	var cred legacyclient.Credentials
	switch {
	case s.Master != nil && s.Master.Username != "":
		cred = s.Master.ActingFor(account)
	case s.Passwords != nil:
		password, ok := s.Passwords(ctx, account)
		if !ok {
			return false, fmt.Errorf("search legacy inbox of %s: no master user and no kept password", account)
		}
		cred = legacyclient.User(account, password)
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
