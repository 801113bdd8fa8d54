package front

// Observer is told about logins and sessions; metrics.Traffic implements
// it. Protocol is "imap" or "pop3", route "local" or "legacy", result
// "ok", "failed" (bad credentials), "limited" (refused by the login
// limiter) or "error" (the legacy server or the store failed).
type Observer interface {
	Login(protocol, route, result string)
	SessionStarted(protocol, route string)
	SessionEnded(protocol, route string)
	Refused(limit string)
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) Login(string, string, string)  {}
func (nopObserver) SessionStarted(string, string) {}
func (nopObserver) SessionEnded(string, string)   {}
func (nopObserver) Refused(string)                {}

func (r *Router) observer() Observer {
	if r.Observer == nil {
		return nopObserver{}
	}
	return r.Observer
}
