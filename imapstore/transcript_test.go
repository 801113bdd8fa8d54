package imapstore

import (
	"testing"
)

func msg(subject string) string {
	return "From: a@example.org\r\nSubject: " + subject + "\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\n\r\nbody " + subject + "\r\n"
}

// STATUS answers every item it accepts, alone and together; Thunderbird
// asks for (UIDNEXT MESSAGES UNSEEN RECENT) of every folder.
func TestStatusItems(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		c := srv.dial(t)
		c.expect("OK", "CREATE st")
		c.appendMessage("st", `\Seen`, msg("one"))
		c.appendMessage("st", `\Deleted`, msg("two"))
		items := []string{"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE"}
		if srv.name() == "mailcapture" {
			items = append(items, "DELETED", "APPENDLIMIT") // RFC 9051 6.3.11, RFC 7889; Dovecot 2.3 has neither
		}
		for _, item := range items {
			c.expect("OK", "STATUS st (%s)", item)
			if len(c.find(`^\* STATUS st \(`+item+` \d+\)$`)) != 1 {
				t.Fatalf("STATUS %s: %q", item, c.lines)
			}
		}
		c.expect("OK", "STATUS st (UIDNEXT MESSAGES UNSEEN RECENT)")
		if len(c.find(`^\* STATUS st \(MESSAGES 2 RECENT 2 UIDNEXT \d+ UNSEEN 1\)$`)) != 1 {
			t.Fatalf("Thunderbird's STATUS: %q", c.lines)
		}
		c.expect("OK", "STATUS st (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)")
		c.expect("BAD", "STATUS st (NOSUCHITEM)")
		c.expect("OK", "NOOP")
	})
}

// \Recent: the first session to see a message gets it, and only that one.
func TestRecent(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		a, b, c, d := srv.dial(t), srv.dial(t), srv.dial(t), srv.dial(t)
		a.expect("OK", "CREATE rc")
		a.appendMessage("rc", "", msg("one"))
		a.appendMessage("rc", "", msg("two"))
		c.expect("OK", "STATUS rc (RECENT)")
		c.has("* STATUS rc (RECENT 2)")
		b.expect("OK", "EXAMINE rc")
		b.has("* 2 RECENT") // EXAMINE shows them and takes them from nobody
		a.expect("OK", "SELECT rc")
		a.has("* 2 EXISTS")
		a.has("* 2 RECENT")
		a.expect("OK", "FETCH 1:2 FLAGS")
		a.has(`* 1 FETCH (FLAGS (\Recent))`)
		a.expect("OK", "SEARCH RECENT")
		a.has("* SEARCH 1 2")
		a.expect("OK", "SEARCH NEW")
		a.has("* SEARCH 1 2")
		a.expect("OK", "SEARCH OLD")
		a.has("* SEARCH")
		c.expect("OK", "SELECT rc")
		c.has("* 0 RECENT")
		c.expect("OK", "SEARCH RECENT")
		c.has("* SEARCH")
		d.expect("OK", "STATUS rc (RECENT)")
		d.has("* STATUS rc (RECENT 0)")
		// Mail that arrives while a session has the mailbox selected is
		// that session's recent mail.
		b.appendMessage("rc", "", msg("three"))
		a.expect("OK", "NOOP")
		c.expect("OK", "NOOP")
		ra, rc := a.find(`^\* 3 RECENT$`), c.find(`^\* 1 RECENT$`)
		if len(ra)+len(rc) != 1 {
			t.Fatalf("\\Recent of the new message: session a %q, session c %q", a.lines, c.lines)
		}
		// COPY makes the copies recent in the target.
		a.expect("OK", "CREATE rc2")
		a.expect("OK", "COPY 1 rc2")
		a.expect("OK", "STATUS rc2 (RECENT)")
		a.has("* STATUS rc2 (RECENT 1)")
	})
}
