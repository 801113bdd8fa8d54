// Package addresses is the one home of what an address means: which
// account a login names (canonical account names), which accounts a
// recipient reaches (the recipient delimiter, the admin's alias table in
// Postfix virtual(5) syntax, catch-alls), and what the legacy server is
// sent. The SMTP front end, the relay queue, the login policy and the
// admin commands all ask it.
package addresses

import (
	"errors"
	"fmt"
	"strings"

	"mailcapture/config"
)

// Naming turns login names and addresses into account names.
type Naming struct {
	// DefaultDomain completes a name without a domain; "" refuses such
	// names.
	DefaultDomain string
	// Delimiters are the recipient delimiter characters ("+" for
	// "bob+lists"); "" turns extensions off.
	Delimiters string
	// LoginName is what the legacy server is sent at a login:
	// "as_typed" (default), "address" or "local_part".
	LoginName string
}

// ErrNoDomain is a name without a domain where no default domain is set.
var ErrNoDomain = errors.New("the name has no domain and accounts.default_domain is not set")

// ErrMalformed is a name that is not an address.
var ErrMalformed = errors.New("not an address")

// Account is the canonical account name of a login name or address: the
// local part as given, "@", the domain in lower case; a name without a
// domain gets the default domain. The extension is kept (see Base).
// Account names are compared without regard to case.
func (n Naming) Account(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || strings.ContainsAny(name, " \t\r\n") {
		return "", fmt.Errorf("%q: %w", name, ErrMalformed)
	}
	i := strings.LastIndexByte(name, '@')
	switch {
	case i < 0:
		if n.DefaultDomain == "" {
			return "", fmt.Errorf("%q: %w", name, ErrNoDomain)
		}
		return name + "@" + strings.ToLower(n.DefaultDomain), nil
	case i == 0 || i == len(name)-1:
		return "", fmt.Errorf("%q: %w", name, ErrMalformed)
	}
	return name[:i] + "@" + strings.ToLower(name[i+1:]), nil
}

// Base is addr without its extension: "bob+lists@example.org" is
// "bob@example.org". A local part that starts with a delimiter keeps it
// (there would be nothing left), as Postfix does.
func (n Naming) Base(addr string) string {
	local, domain, ok := split(addr)
	if !ok || n.Delimiters == "" {
		return addr
	}
	if j := strings.IndexAny(local, n.Delimiters); j > 0 {
		return local[:j] + "@" + domain
	}
	return addr
}

// extension is addr's extension with its delimiter ("+lists"), or "".
func (n Naming) extension(addr string) string {
	local, _, ok := split(addr)
	if !ok || n.Delimiters == "" {
		return ""
	}
	if j := strings.IndexAny(local, n.Delimiters); j > 0 {
		return local[j:]
	}
	return ""
}

// LegacyLogin is the name a login is sent to the legacy server with:
// typed as the user typed it (as_typed), the canonical account name
// (address), or its local part (local_part).
func (n Naming) LegacyLogin(typed, account string) string {
	switch n.LoginName {
	case "address":
		return account
	case "local_part":
		if local, _, ok := split(account); ok {
			return local
		}
		return account
	}
	if typed == "" {
		return account
	}
	return typed
}

// split cuts an address at its last "@".
func split(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", false
	}
	return addr[:i], addr[i+1:], true
}

// Domain is addr's domain in lower case, or "".
func Domain(addr string) string {
	_, d, _ := split(addr)
	return strings.ToLower(d)
}

// Configured is the naming the configuration sets: accounts.default_domain
// (or the only domain), smtp.recipient_delimiter, legacy.login_name.
func Configured(cfg *config.Config) Naming {
	return Naming{DefaultDomain: cfg.DefaultDomain(), Delimiters: cfg.SMTP.RecipientDelimiter, LoginName: cfg.Legacy.LoginName}
}
