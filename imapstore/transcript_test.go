package imapstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"mailcapture/store"
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

// A keyword is announced in FLAGS (and PERMANENTFLAGS) before any FETCH
// shows it, also when another session's STORE or APPEND brought it.
func TestKeywordsAnnouncedBeforeUse(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		a, b := srv.dial(t), srv.dial(t)
		a.expect("OK", "CREATE kw")
		a.appendMessage("kw", "", msg("one"))
		a.expect("OK", "SELECT kw")
		b.expect("OK", "SELECT kw")
		b.expect("OK", "STORE 1 +FLAGS ($Label1)")
		a.expect("OK", "NOOP")
		checkAnnounced(t, a, "$Label1")
		b.appendMessage("kw", "$Label2", msg("two"))
		a.expect("OK", "NOOP")
		checkAnnounced(t, a, "$Label2")
		a.expect("OK", "FETCH 1:* FLAGS")
		a.expect("OK", "STORE 1 +FLAGS ($Label3)")
		checkAnnounced(t, a, "$Label3")
	})
}

// checkAnnounced fails unless a FLAGS response listing keyword comes
// before the first response of the last command that shows it.
func checkAnnounced(t *testing.T, c *tclient, keyword string) {
	t.Helper()
	announced := false
	for _, l := range c.lines {
		upper := strings.ToUpper(l)
		if strings.HasPrefix(upper, "* FLAGS ") && strings.Contains(l, keyword) {
			announced = true
		}
		if strings.Contains(upper, " FETCH ") && strings.Contains(l, keyword) {
			if !announced {
				t.Fatalf("%s shown before FLAGS announced it: %q", keyword, c.lines)
			}
			return
		}
	}
	if !announced {
		t.Fatalf("%s never announced: %q", keyword, c.lines)
	}
}

// LIST "" "" gives the separator and root; LSUB and LIST (SUBSCRIBED) show
// subscribed names without a mailbox; RECURSIVEMATCH gives CHILDINFO for
// parents of subscribed names the pattern does not match.
func TestListSubscriptions(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		c := srv.dial(t)
		c.expect("OK", `LIST "" ""`)
		c.has(`* LIST (\Noselect) "/" ""`)
		for _, name := range []string{"ls/test1", "ls/test2/", "ls/test2/test1", "ls/test3", "ls/test6", "ls/test7/test7", "ls/test8/test8", "ls/test8/test9"} {
			c.expect("OK", "CREATE %s", name)
		}
		for _, name := range []string{"ls/test1", "ls/test2/test1", "ls/test6", "ls/test7/test7", "ls/test8/test8", "ls/test8/test9"} {
			c.expect("OK", "SUBSCRIBE %s", name)
		}
		c.expect("OK", "DELETE ls/test6")
		c.expect("OK", `LIST (SUBSCRIBED) "" ls/*`)
		c.has(`* LIST (\Subscribed) "/" ls/test1`)
		for _, l := range c.find(`ls/test6$`) {
			if !strings.Contains(l, `\NonExistent`) || strings.Contains(l, `\Noselect`) {
				t.Fatalf("deleted, subscribed: %q", l)
			}
		}
		if len(c.find(`ls/test6$`)) != 1 {
			t.Fatalf("LIST (SUBSCRIBED) lost the deleted mailbox's subscription: %q", c.lines)
		}
		c.expect("OK", "%s", `LSUB "" ls/%`)
		c.has(`* LSUB () "/" ls/test1`)
		c.has(`* LSUB (\Noselect) "/" ls/test2`)
		c.has(`* LSUB (\Noselect) "/" ls/test7`)
		if srv.name() == "mailcapture" {
			// A subscribed name without a mailbox cannot be selected: LSUB
			// says so (RFC 3501 6.3.9 gives LSUB LIST's attributes);
			// Dovecot leaves it unmarked.
			c.has(`* LSUB (\Noselect) "/" ls/test6`)
		}
		c.expect("OK", "%s", `LIST (SUBSCRIBED RECURSIVEMATCH) "" ls/test2% RETURN (CHILDREN)`)
		c.has(`* LIST (\HasChildren) "/" ls/test2 (CHILDINFO ("SUBSCRIBED"))`)
		c.expect("OK", `LIST (SUBSCRIBED RECURSIVEMATCH) "" *test8`)
		if len(c.find(`^\* LIST \([^)]*\) "/" ls/test8 \(CHILDINFO \("SUBSCRIBED"\)\)$`)) != 1 {
			t.Fatalf("RECURSIVEMATCH *test8: %q", c.lines)
		}
		if len(c.find(`^\* LIST \([^)]*\\Subscribed[^)]*\) "/" ls/test8/test8$`)) != 1 {
			t.Fatalf("RECURSIVEMATCH *test8: %q", c.lines)
		}
		c.expect("OK", `LIST (SUBSCRIBED RECURSIVEMATCH) "" (ls/test2 ls/test2/test1)`)
		c.hasNot(`CHILDINFO`)
		c.expect("BAD", `LIST (RECURSIVEMATCH) "" ""`)
		c.expect("BAD", `LIST (NOSUCHOPTION) "" ""`)
		c.expect("BAD", `LIST "" "" RETURN (NOSUCHOPTION)`)
	})
}

// A mailbox deleted and created again gets a new, larger UIDVALIDITY,
// within the same second and after a restart.
func TestUIDValidityNeverReused(t *testing.T) {
	l := newLocal(t, "/")
	c := l.dial(t)
	uidvalidity := func(name string) uint64 {
		t.Helper()
		c.expect("OK", "STATUS %s (UIDVALIDITY UIDNEXT)", name)
		var v, next uint64
		if _, err := fmt.Sscanf(c.lines[0], "* STATUS "+name+" (UIDNEXT %d UIDVALIDITY %d)", &next, &v); err != nil {
			t.Fatalf("%q: %v", c.lines, err)
		}
		return v
	}
	seen := map[uint64]bool{}
	last := uint64(0)
	for i := 0; i < 5; i++ {
		c.expect("OK", "CREATE again")
		c.appendMessage("again", "", msg("x"))
		v := uidvalidity("again")
		if seen[v] || v <= last {
			t.Fatalf("round %d: UIDVALIDITY %d after %d", i, v, last)
		}
		seen[v], last = true, v
		c.expect("OK", "DELETE again")
	}
	// A new store on the same directory: the highest value given is kept.
	ctx := context.Background()
	if err := l.st.SetLegacyNamespace(ctx, user, "", "/", false); err != nil {
		t.Fatal(err)
	}
	acct, _ := l.st.Account(ctx, user)
	mb, err := l.st.CreateMailbox(ctx, acct.ID, store.MailboxSpec{Name: "again"})
	if err != nil || uint64(mb.UIDValidity) <= last {
		t.Fatalf("after the rounds: UIDVALIDITY %d (%v), last %d", mb.UIDValidity, err, last)
	}
}

// CLOSE after EXAMINE answers OK and expunges nothing.
func TestCloseAfterExamine(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		c := srv.dial(t)
		c.expect("OK", "CREATE cl")
		c.appendMessage("cl", `\Deleted`, msg("one"))
		c.expect("OK", "EXAMINE cl")
		c.expect("OK", "CLOSE")
		c.expect("OK", "STATUS cl (MESSAGES)")
		c.has("* STATUS cl (MESSAGES 1)")
		c.expect("OK", "SELECT cl")
		c.expect("OK", "CLOSE")
		c.hasNot("EXPUNGE")
		c.expect("OK", "STATUS cl (MESSAGES)")
		c.has("* STATUS cl (MESSAGES 0)")
	})
}

// A name or pattern that is not modified UTF-7 gets NO or BAD with a
// clear text, never a server error.
func TestInvalidModifiedUTF7(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		c := srv.dial(t)
		cmds := []string{`CREATE "a&Jjo"`, `CREATE "a&AGE-&AGE-"`, `CREATE "&AGE"`, `SELECT "b&ZeVnLIqe"`, `STATUS "&" (MESSAGES)`}
		if srv.name() == "mailcapture" {
			// A pattern is refused too (RFC 3501 5.1.3); Dovecot matches
			// it as it stands.
			cmds = append(cmds, `LIST "" "x&Jjo*"`)
		}
		for _, cmd := range cmds {
			st := c.do("%s", cmd)
			if st != "NO" && st != "BAD" {
				t.Fatalf("%s: %s", cmd, c.tag)
			}
			if strings.Contains(strings.ToUpper(c.tag), "SERVERBUG") {
				t.Fatalf("%s: %s", cmd, c.tag)
			}
		}
		c.expect("OK", `CREATE "caf&AOk-"`)
		c.expect("OK", `LIST "" "caf&AOk-"`)
		c.has(`* LIST (\HasNoChildren) "/" caf&AOk-`)
	})
}

// STORE answers with one FETCH per message whose flags changed; with
// .SILENT none reaches its own session.
func TestStoreSilent(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		c, other := srv.dial(t), srv.dial(t)
		c.expect("OK", "CREATE sl")
		c.appendMessage("sl", "", msg("one"))
		c.appendMessage("sl", "", msg("two"))
		c.expect("OK", "SELECT sl")
		other.expect("OK", "SELECT sl")
		c.expect("OK", `STORE 1:2 +FLAGS.SILENT (\Flagged)`)
		c.hasNot("FETCH")
		c.expect("OK", "NOOP")
		c.hasNot("FETCH")
		c.expect("OK", `STORE 1:2 +FLAGS (\Seen)`)
		if n := len(c.find(`^\* [12] FETCH`)); n != 2 {
			t.Fatalf("non-silent STORE: %q", c.lines)
		}
		c.expect("OK", "NOOP")
		c.hasNot("FETCH")
		other.expect("OK", "NOOP")
		if n := len(other.find(`^\* [12] FETCH`)); n != 2 {
			t.Fatalf("the other session heard %q", other.lines)
		}
	})
}

// A message another session expunged stays readable until this session
// is told (or the answer says EXPUNGEISSUED); never a server error.
func TestFetchAfterOtherSessionExpunged(t *testing.T) {
	bothServers(t, "/", func(t *testing.T, srv imapServer) {
		a, b := srv.dial(t), srv.dial(t)
		a.expect("OK", "CREATE ex")
		body := msg("doomed")
		a.appendMessage("ex", "", body)
		a.appendMessage("ex", "", msg("kept"))
		a.expect("OK", "SELECT ex")
		a.expect("OK", "FETCH 1 UID")
		b.expect("OK", "SELECT ex")
		b.expect("OK", `STORE 1 +FLAGS.SILENT (\Deleted)`)
		b.expect("OK", "EXPUNGE")
		st := a.do("FETCH 1 (UID FLAGS BODY.PEEK[])")
		if strings.Contains(strings.ToUpper(a.tag), "SERVERBUG") || st == "BAD" {
			t.Fatalf("FETCH of an expunged message: %s", a.tag)
		}
		if st == "OK" && !strings.Contains(strings.ToUpper(a.tag), "EXPUNGEISSUED") {
			if len(a.lines) == 0 || !strings.HasSuffix(a.lines[0], body+")") {
				t.Fatalf("FETCH of an expunged message: %q %s", a.lines, a.tag)
			}
		}
		a.hasNot("EXPUNGE$")
		a.expect("OK", "NOOP")
		a.has("* 1 EXPUNGE")
		a.expect("OK", "FETCH 1 BODY.PEEK[]")
		if len(a.lines) != 1 || !strings.Contains(a.lines[0], "kept") {
			t.Fatalf("after the expunge: %q", a.lines)
		}
	})
}

// A command that panics ends its session with BYE; the panic is logged
// with its stack through the server's logger and counted.
func TestPanicIsLoggedAndCounted(t *testing.T) {
	l := newLocal(t, "/")
	panics := 0
	l.srv.opts.Panicked = func() { panics++ }
	l.srv.panicOn = "NOOP"
	c := l.dial(t)
	c.expect("OK", "CAPABILITY")
	c.write("p1 NOOP\r\n")
	if line := c.readLine(); !strings.HasPrefix(line, "* BYE [SERVERBUG]") {
		t.Fatalf("after a panic: %q", line)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.br.ReadByte(); err == nil {
		t.Fatalf("the session went on after a panic: %q", n)
	}
	logged := l.logs.take()
	if len(logged) != 1 || !strings.Contains(logged[0], "panicked") || !strings.Contains(logged[0], "stack=") || !strings.Contains(logged[0], "session.go") {
		t.Fatalf("logged: %q", logged)
	}
	if panics != 1 {
		t.Fatalf("panics counted: %d", panics)
	}
	// Other sessions go on.
	l.srv.panicOn = ""
	l.dial(t).expect("OK", "NOOP")
}
