package legacytest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Message is one message to put on the legacy server.
type Message struct {
	Body         []byte
	Flags        []imap.Flag
	InternalDate time.Time
}

// Folder is a legacy folder and its messages. Name is relative to the
// personal namespace (the prefix is added).
type Folder struct {
	Name       string
	Subscribed bool
	Messages   []Message
	// Expunge lists 0-based indexes of Messages to expunge after the
	// upload, leaving gaps in the UIDs.
	Expunge []int
}

// Login opens an IMAP session as user on the legacy server.
func (d *Dovecot) Login(t testing.TB, user, password string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(d.IMAPAddr, nil)
	if err != nil {
		t.Fatalf("legacytest: dial %s: %v", d.IMAPAddr, err)
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		t.Fatalf("legacytest: login %s: %v", user, err)
	}
	return c
}

// FullName returns the folder's name with the namespace prefix.
func (d *Dovecot) FullName(name string) string {
	if name == "INBOX" {
		return name
	}
	return d.Options.Prefix + strings.ReplaceAll(name, "/", d.Options.Separator)
}

// Populate uploads folders for user (APPEND with flags and internal dates,
// pipelined), then expunges the listed messages.
func (d *Dovecot) Populate(t testing.TB, user, password string, folders []Folder) {
	t.Helper()
	if err := d.Upload(user, password, folders); err != nil {
		t.Fatalf("legacytest: %v", err)
	}
}

// Upload is Populate returning its error, for use from any goroutine.
func (d *Dovecot) Upload(user, password string, folders []Folder) error {
	c, err := imapclient.DialInsecure(d.IMAPAddr, nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", d.IMAPAddr, err)
	}
	defer c.Close()
	if err := c.Login(user, password).Wait(); err != nil {
		return fmt.Errorf("login %s: %w", user, err)
	}
	for _, f := range folders {
		if err := d.upload(c, f); err != nil {
			return err
		}
	}
	return c.Logout().Wait()
}

func (d *Dovecot) upload(c *imapclient.Client, f Folder) error {
	name := d.FullName(f.Name)
	if name != "INBOX" {
		if err := c.Create(name, nil).Wait(); err != nil && !strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	if f.Subscribed {
		if err := c.Subscribe(name).Wait(); err != nil {
			return fmt.Errorf("subscribe %s: %w", name, err)
		}
	}
	const window = 64
	var pending []*imapclient.AppendCommand
	wait := func() error {
		for _, cmd := range pending {
			if _, err := cmd.Wait(); err != nil {
				return fmt.Errorf("append to %s: %w", name, err)
			}
		}
		pending = pending[:0]
		return nil
	}
	for _, m := range f.Messages {
		cmd := c.Append(name, int64(len(m.Body)), &imap.AppendOptions{Flags: m.Flags, Time: m.InternalDate})
		if _, err := cmd.Write(m.Body); err != nil {
			return fmt.Errorf("append to %s: %w", name, err)
		}
		if err := cmd.Close(); err != nil {
			return fmt.Errorf("append to %s: %w", name, err)
		}
		pending = append(pending, cmd)
		if len(pending) == window {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	if err := wait(); err != nil {
		return err
	}
	if len(f.Expunge) == 0 {
		return nil
	}
	if _, err := c.Select(name, nil).Wait(); err != nil {
		return fmt.Errorf("select %s: %w", name, err)
	}
	var seqs imap.SeqSet
	for _, i := range f.Expunge {
		seqs.AddNum(uint32(i + 1))
	}
	store := c.Store(seqs, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil)
	if err := store.Close(); err != nil {
		return fmt.Errorf("store \\Deleted in %s: %w", name, err)
	}
	if err := c.Expunge().Close(); err != nil {
		return fmt.Errorf("expunge %s: %w", name, err)
	}
	if err := c.Unselect().Wait(); err != nil {
		return fmt.Errorf("unselect %s: %w", name, err)
	}
	return nil
}

// SnapshotMessage is one message as the legacy server serves it.
type SnapshotMessage struct {
	UID          uint32
	Flags        []string // sorted, \Recent left out
	InternalDate time.Time
	Size         int64
	Body         []byte
}

// SnapshotFolder is one folder as the legacy server serves it.
type SnapshotFolder struct {
	Name        string
	Attrs       []string // sorted special-use and \Noselect-style attributes
	Subscribed  bool
	UIDValidity uint32
	UIDNext     uint32
	Messages    []SnapshotMessage
}

// Snapshot reads every folder and message of user over IMAP: what a client
// sees, which is what a copy must reproduce.
func (d *Dovecot) Snapshot(t testing.TB, user, password string) map[string]*SnapshotFolder {
	t.Helper()
	c := d.Login(t, user, password)
	defer c.Close()
	return SnapshotIMAP(t, c)
}

// SnapshotIMAP reads every folder and message over an IMAP session.
func SnapshotIMAP(t testing.TB, c *imapclient.Client) map[string]*SnapshotFolder {
	t.Helper()
	list, err := c.List("", "*", &imap.ListOptions{ReturnSubscribed: true,
		ReturnSpecialUse: c.Caps().Has(imap.CapSpecialUse)}).Collect()
	if err != nil {
		t.Fatalf("snapshot: list: %v", err)
	}
	out := map[string]*SnapshotFolder{}
	for _, mb := range list {
		f := &SnapshotFolder{Name: mb.Mailbox}
		noselect := false
		for _, a := range mb.Attrs {
			switch a {
			case imap.MailboxAttrSubscribed:
				f.Subscribed = true
			case imap.MailboxAttrHasChildren, imap.MailboxAttrHasNoChildren, imap.MailboxAttrMarked, imap.MailboxAttrUnmarked:
			case imap.MailboxAttrNoSelect, imap.MailboxAttrNonExistent:
				// A name that only parents others: Dovecot's Maildir++ says
				// \NonExistent in an extended LIST, the local server (and
				// Dovecot's other layouts) \Noselect; \NonExistent implies
				// \Noselect (RFC 5258 3.4), which is what a client acts on.
				noselect = true
				f.Attrs = append(f.Attrs, string(imap.MailboxAttrNoSelect))
			default:
				f.Attrs = append(f.Attrs, string(a))
			}
		}
		sort.Strings(f.Attrs)
		out[f.Name] = f
		if noselect {
			continue
		}
		sel, err := c.Select(mb.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatalf("snapshot: select %s: %v", mb.Mailbox, err)
		}
		f.UIDValidity, f.UIDNext = sel.UIDValidity, uint32(sel.UIDNext)
		if sel.NumMessages > 0 {
			var all imap.SeqSet
			all.AddRange(1, 0)
			fetch := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, RFC822Size: true,
				BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
			for {
				msg := fetch.Next()
				if msg == nil {
					break
				}
				var sm SnapshotMessage
				for item := msg.Next(); item != nil; item = msg.Next() {
					switch v := item.(type) {
					case imapclient.FetchItemDataUID:
						sm.UID = uint32(v.UID)
					case imapclient.FetchItemDataFlags:
						for _, fl := range v.Flags {
							if fl != imap.Flag(`\Recent`) {
								sm.Flags = append(sm.Flags, string(fl))
							}
						}
						sort.Strings(sm.Flags)
					case imapclient.FetchItemDataInternalDate:
						sm.InternalDate = v.Time
					case imapclient.FetchItemDataRFC822Size:
						sm.Size = v.Size
					case imapclient.FetchItemDataBodySection:
						sm.Body, err = io.ReadAll(v.Literal)
						if err != nil {
							t.Fatalf("snapshot: read body: %v", err)
						}
					}
				}
				f.Messages = append(f.Messages, sm)
			}
			if err := fetch.Close(); err != nil {
				t.Fatalf("snapshot: fetch %s: %v", mb.Mailbox, err)
			}
			sort.Slice(f.Messages, func(i, j int) bool { return f.Messages[i].UID < f.Messages[j].UID })
		}
		if err := c.Unselect().Wait(); err != nil {
			t.Fatalf("snapshot: unselect %s: %v", mb.Mailbox, err)
		}
	}
	return out
}

// Generate returns n varied messages: plain and multipart, 8-bit bodies,
// bare LF line ends, malformed headers, long lines, sizes from a few
// hundred bytes to about maxSize, flags and keywords, internal dates in
// several zones.
func Generate(seed uint64, n int, maxSize int) []Message {
	r := rand.New(rand.NewPCG(seed, 99))
	flagSets := [][]imap.Flag{nil, {imap.FlagSeen}, {imap.FlagSeen, imap.FlagAnswered}, {imap.FlagFlagged},
		{imap.FlagSeen, "$Label1"}, {"$Forwarded", imap.FlagSeen}, {imap.FlagDraft}, {"Work", "$Junk"}}
	zones := []*time.Location{time.UTC, time.FixedZone("", -7*3600), time.FixedZone("", 5*3600+1800)}
	out := make([]Message, n)
	for i := range out {
		var b bytes.Buffer
		kind := r.IntN(10)
		date := time.Date(2015+r.IntN(10), time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), 0, zones[r.IntN(len(zones))])
		nl := "\r\n"
		if kind == 7 {
			nl = "\n" // bare LF throughout
		}
		fmt.Fprintf(&b, "From: Sender %d <sender%d@example.net>%s", i, i, nl)
		fmt.Fprintf(&b, "To: user@example.org%s", nl)
		fmt.Fprintf(&b, "Subject: message %d of %d%s", i, n, nl)
		fmt.Fprintf(&b, "Date: %s%s", date.Format(time.RFC1123Z), nl)
		fmt.Fprintf(&b, "Message-ID: <%d.%d@legacy.example>%s", seed, i, nl)
		if kind == 8 {
			b.WriteString("This header line has no colon" + nl + "X-Broken:: \x01\x02" + nl)
		}
		size := 200 + int(float64(maxSize)*r.Float64()*r.Float64()*r.Float64())
		switch {
		case kind == 5:
			fmt.Fprintf(&b, "MIME-Version: 1.0%sContent-Type: multipart/mixed; boundary=\"b%d\"%s%s", nl, i, nl, nl)
			fmt.Fprintf(&b, "--b%d%sContent-Type: text/plain; charset=utf-8%sContent-Transfer-Encoding: 8bit%s%sGrüße aus Köln%s", i, nl, nl, nl, nl, nl)
			fmt.Fprintf(&b, "--b%d%sContent-Type: application/octet-stream%sContent-Transfer-Encoding: base64%s%s", i, nl, nl, nl, nl)
			for b.Len() < size {
				b.WriteString("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcA==" + nl)
			}
			fmt.Fprintf(&b, "--b%d--%s", i, nl)
		case kind == 6:
			fmt.Fprintf(&b, "Content-Type: text/plain; charset=iso-8859-1%sContent-Transfer-Encoding: 8bit%s%s", nl, nl, nl)
			for b.Len() < size {
				b.WriteString("caf\xe9 cr\xe8me br\xfbl\xe9e " + nl)
			}
		case kind == 9:
			b.WriteString(nl)
			b.WriteString(strings.Repeat("long line without a break ", 400) + nl)
		default:
			b.WriteString(nl)
			for b.Len() < size {
				fmt.Fprintf(&b, "Line of message %d with some words to fill it up.%s", i, nl)
			}
		}
		out[i] = Message{Body: b.Bytes(), Flags: flagSets[r.IntN(len(flagSets))], InternalDate: date}
	}
	return out
}

// SeedInbox writes messages straight into a user's INBOX Maildir, in
// order, as files Dovecot has not seen yet: much faster than APPEND for
// large mailboxes. Dovecot gives them UIDs at the next login that opens
// INBOX, in the order of their file names. Flags are not written. Call it
// before anything else touches the user's INBOX.
func (d *Dovecot) SeedInbox(t testing.TB, user string, msgs []Message) {
	t.Helper()
	home := filepath.Join(d.Dir, "home", user)
	maildir := filepath.Join(home, "Maildir")
	for _, sub := range []string{"", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"} {
		dir := filepath.Join(home, sub)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, d.mailUID, d.mailGID); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range msgs {
		name := filepath.Join(maildir, "cur", fmt.Sprintf("1700000000.M%08dP1.legacytest,S=%d:2,", i, len(m.Body)))
		if err := os.WriteFile(name, m.Body, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(name, d.mailUID, d.mailGID); err != nil {
			t.Fatal(err)
		}
		if !m.InternalDate.IsZero() {
			if err := os.Chtimes(name, m.InternalDate, m.InternalDate); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// InstallMaildir makes the Maildir tree at src the user's mail store
// (moved, then owned by the mail user). Call it before the user's first
// login.
func (d *Dovecot) InstallMaildir(t testing.TB, user, src string) {
	t.Helper()
	home := filepath.Join(d.Dir, "home", user)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(home, "Maildir")
	if err := os.Rename(src, dst); err != nil {
		t.Fatal(err)
	}
	err := filepath.Walk(home, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(path, d.mailUID, d.mailGID)
	})
	if err != nil {
		t.Fatal(err)
	}
}
