package legacyclient

// Credentials are what a login sends: the user's own, or a master user
// acting for an account.
type Credentials struct {
	Username string
	Password string
	// Authzid, when set, is the account a master user acts for, sent as
	// SASL PLAIN's authorization identity.
	Authzid string
}

// User is a user's own login.
func User(name, password string) Credentials { return Credentials{Username: name, Password: password} }

// MasterLogin is one legacy master user that may log in to every account,
// for accounts nobody logs into.
type MasterLogin struct {
	Username string
	Password string
	// Style is "separator" (default: LOGIN "account*master", Dovecot's
	// auth_master_user_separator) or "sasl" (AUTHENTICATE PLAIN with the
	// account as authorization identity).
	Style string
	// Separator is used with the "separator" style. Default "*".
	Separator string
}

// ActingFor is the master user's login for account.
func (m *MasterLogin) ActingFor(account string) Credentials {
	if m.Style == "sasl" {
		return Credentials{Username: m.Username, Password: m.Password, Authzid: account}
	}
	sep := m.Separator
	if sep == "" {
		sep = "*"
	}
	return Credentials{Username: account + sep + m.Username, Password: m.Password}
}
