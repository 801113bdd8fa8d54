// Package labels holds every value a metric label of mailcapture takes,
// as typed constants: the packages that count things can only pass
// declared values, and the metrics package exports every series from the
// start (dashboards show zeros, not gaps). Adding a value means adding it
// here, to its list.
package labels

// Protocol is the protocol label of logins and sessions.
type Protocol string

// The protocols.
const (
	IMAP        Protocol = "imap"
	POP3        Protocol = "pop3"
	Submission  Protocol = "submission"
	ManageSieve Protocol = "managesieve"
)

// Protocols lists every Protocol.
var Protocols = []Protocol{IMAP, POP3, Submission, ManageSieve}

// Route is where a login went: served from the store or the legacy
// server.
type Route string

// The routes of a login.
const (
	Local  Route = "local"
	Legacy Route = "legacy"
)

// Routes lists every Route.
var Routes = []Route{Local, Legacy}

// LoginResult is how a login ended.
type LoginResult string

// The results of a login.
const (
	LoginOK LoginResult = "ok"
	// LoginFailed: wrong user name or password.
	LoginFailed LoginResult = "failed"
	// LoginLimited: refused by the failed-login limits before anything
	// was checked.
	LoginLimited LoginResult = "limited"
	// LoginMoving: refused for now, the account's cut-over outlasted the
	// wait.
	LoginMoving LoginResult = "moving"
	// LoginUnavailable: the legacy server could not check it now.
	LoginUnavailable LoginResult = "unavailable"
	// LoginError: a failure of mailcapture itself (the store).
	LoginError LoginResult = "error"
)

// LoginResults lists every LoginResult.
var LoginResults = []LoginResult{LoginOK, LoginFailed, LoginLimited, LoginMoving, LoginUnavailable, LoginError}

// SMTPRoute is where an SMTP message went.
type SMTPRoute string

// The routes of a message.
const (
	SMTPLocal  SMTPRoute = "local"
	SMTPLegacy SMTPRoute = "legacy"
	SMTPHeld   SMTPRoute = "held"
	// SMTPOutbound: submitted mail for other domains, spooled for the
	// outbound relay.
	SMTPOutbound SMTPRoute = "outbound"
	// SMTPNone: not for a hosted domain.
	SMTPNone SMTPRoute = "none"
)

// SMTPRoutes lists every SMTPRoute.
var SMTPRoutes = []SMTPRoute{SMTPLocal, SMTPLegacy, SMTPHeld, SMTPOutbound, SMTPNone}

// SubmissionRoute is where a submitted message went.
type SubmissionRoute string

// The routes of a submitted message.
const (
	SubmitLocal  SubmissionRoute = "local"  // into a captured account's INBOX
	SubmitHeld   SubmissionRoute = "held"   // held for an account in cut-over
	SubmitLegacy SubmissionRoute = "legacy" // spooled for the legacy server's intake (a hosted account not captured)
	// SubmitPassthrough: through the legacy submission server, on the
	// user's own session.
	SubmitPassthrough SubmissionRoute = "passthrough"
	SubmitOutbound    SubmissionRoute = "outbound" // spooled for the outbound relay
	SubmitNone        SubmissionRoute = "none"     // refused before any route
)

// SubmissionRoutes lists every SubmissionRoute.
var SubmissionRoutes = []SubmissionRoute{SubmitLocal, SubmitHeld, SubmitLegacy, SubmitPassthrough, SubmitOutbound, SubmitNone}

// SubmissionResult is what became of a submitted message at the front end.
type SubmissionResult string

// The results of a submission.
const (
	SubmitAccepted SubmissionResult = "accepted" // 250 after DATA
	SubmitRejected SubmissionResult = "rejected" // a 5xx: sender policy, recipient, the legacy server's refusal
	SubmitDeferred SubmissionResult = "deferred" // a 4xx: the sender tries again
)

// SubmissionResults lists every SubmissionResult.
var SubmissionResults = []SubmissionResult{SubmitAccepted, SubmitRejected, SubmitDeferred}

// SMTPResult is what became of an SMTP message.
type SMTPResult string

// The results of a message: at the front end (accepted, rejected,
// deferred), then in the relay queue.
const (
	SMTPAccepted SMTPResult = "accepted"
	SMTPRejected SMTPResult = "rejected"
	SMTPDeferred SMTPResult = "deferred"
	// SMTPDelivered: handed to the legacy server.
	SMTPDelivered SMTPResult = "delivered"
	// SMTPRetried: the legacy server could not take it now.
	SMTPRetried SMTPResult = "retried"
	// SMTPBounced: returned to the sender in a DSN.
	SMTPBounced SMTPResult = "bounced"
	// SMTPResentUnchecked: sent again after an attempt left in doubt,
	// without a way to look whether it had arrived.
	SMTPResentUnchecked SMTPResult = "resent_unchecked"
	// SMTPRerouted: held for a recipient's cut-over, or delivered locally
	// to a recipient captured meanwhile, instead of relayed.
	SMTPRerouted SMTPResult = "rerouted"
)

// SMTPResults lists every SMTPResult.
var SMTPResults = []SMTPResult{SMTPAccepted, SMTPRejected, SMTPDeferred, SMTPDelivered, SMTPRetried, SMTPBounced, SMTPResentUnchecked, SMTPRerouted}

// Limit names a configured limit that refused something.
type Limit string

// The limits.
const (
	ConnectionsPerAddress Limit = "connections_per_address"
	Connections           Limit = "connections"
	FailedLogins          Limit = "failed_logins"
	// Timeout: a client silent too long before login (IMAP, POP3).
	Timeout Limit = "timeout"
	// LineLength: a command line or literal over its bound (IMAP, POP3).
	LineLength Limit = "line_length"
	// UnknownCommand: a command unknown before login, or input that is
	// not the protocol at all; the session was ended.
	UnknownCommand     Limit = "unknown_command"
	SMTPHops           Limit = "smtp_hops"
	SMTPSize           Limit = "smtp_size"
	SMTPDataTimeout    Limit = "smtp_data_timeout"
	SMTPCommandTimeout Limit = "smtp_command_timeout"
	SMTPLineLength     Limit = "smtp_line_length"
	// SubmissionRate: an account's submissions past
	// submission.max_messages_per_hour.
	SubmissionRate Limit = "submission_rate"
	// SenderPolicy: a submission from an address not the account's.
	SenderPolicy Limit = "sender_policy"
)

// Limits lists every Limit.
var Limits = []Limit{ConnectionsPerAddress, Connections, FailedLogins, Timeout, LineLength, UnknownCommand,
	SMTPHops, SMTPSize, SMTPDataTimeout, SMTPCommandTimeout, SMTPLineLength, SubmissionRate, SenderPolicy}

// LegacyKind is the kind of a failed exchange with the legacy server.
type LegacyKind string

// The kinds of legacy error.
const (
	LegacyAuth        LegacyKind = "auth"        // credentials refused
	LegacyTimeout     LegacyKind = "timeout"     // no answer in time
	LegacyConnect     LegacyKind = "connect"     // the connection failed or was refused
	LegacyTLS         LegacyKind = "tls"         // the TLS handshake or certificate failed
	LegacyUnavailable LegacyKind = "unavailable" // a temporary answer of the server
	LegacyProtocol    LegacyKind = "protocol"    // an answer that breaks the protocol
)

// LegacyKinds lists every LegacyKind.
var LegacyKinds = []LegacyKind{LegacyAuth, LegacyTimeout, LegacyConnect, LegacyTLS, LegacyUnavailable, LegacyProtocol}

// RetirementBlocker is a kind of what would break if the legacy server
// went away now (mailcapture_retirement_blockers).
type RetirementBlocker string

// The kinds of retirement blockers.
const (
	BlockerUncaptured RetirementBlocker = "uncaptured_accounts"  // accounts not captured that still get mail
	BlockerUnresolved RetirementBlocker = "unresolved_addresses" // relayed addresses that reach no known account
	BlockerForwards   RetirementBlocker = "forwards"             // aliases forwarding outside the domains
	BlockerSpooled    RetirementBlocker = "spooled"              // mail waiting for the legacy server
	BlockerHeld       RetirementBlocker = "held"                 // mail held for cut-overs
	BlockerLegacyNews RetirementBlocker = "legacy_news"          // captured accounts with legacy mail not followed
)

// RetirementBlockers lists every RetirementBlocker.
var RetirementBlockers = []RetirementBlocker{BlockerUncaptured, BlockerUnresolved, BlockerForwards, BlockerSpooled, BlockerHeld, BlockerLegacyNews}
