// Package demo runs a whole migration on one machine with nothing
// installed: a sample legacy mail server in memory (IMAP, POP3, LMTP),
// seeded with accounts and mail, for `mailcapture demo`.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-smtp"

	"mailcapture/pop3"
)

// Account is a sample legacy account.
type Account struct {
	Name     string
	Password string
}

// Legacy is the sample legacy server: IMAP, POP3 and LMTP on loopback.
type Legacy struct {
	IMAPAddr, POP3Addr, LMTPAddr string
	Accounts                     []Account

	mem    *imapmemserver.Server
	users  map[string]*imapmemserver.User
	imap   *imapserver.Server
	pop3   *pop3.Server
	lmtp   *smtp.Server
	closed sync.Once
}

// folders are the sample folders, with their share of the messages.
var folders = []struct {
	name  string
	share int
}{{"INBOX", 5}, {"Sent", 2}, {"Archive", 2}, {"Lists/golang", 1}}

// StartLegacy starts the sample legacy server with the accounts, each
// given about perAccount messages spread over a few folders.
func StartLegacy(accounts []Account, perAccount int, log *slog.Logger) (*Legacy, error) {
	l := &Legacy{Accounts: accounts, mem: imapmemserver.New(), users: map[string]*imapmemserver.User{}}
	rng := rand.New(rand.NewPCG(1, 2))
	for i, a := range accounts {
		u := imapmemserver.NewUser(a.Name, a.Password)
		l.mem.AddUser(u)
		l.users[strings.ToLower(a.Name)] = u
		if err := seed(u, a.Name, perAccount, rng, i); err != nil {
			return nil, fmt.Errorf("seed %s: %w", a.Name, err)
		}
	}
	l.imap = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return l.mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
	})
	l.pop3 = &pop3.Server{Backend: &maildrops{legacy: l}, Hostname: "legacy.demo", Log: log}
	l.lmtp = smtp.NewServer(&intake{legacy: l})
	l.lmtp.LMTP = true
	l.lmtp.Domain = "legacy.demo"
	l.lmtp.ReadTimeout, l.lmtp.WriteTimeout = time.Minute, time.Minute
	for _, s := range []struct {
		addr  *string
		serve func(net.Listener) error
	}{{&l.IMAPAddr, l.imap.Serve}, {&l.POP3Addr, l.pop3.Serve}, {&l.LMTPAddr, l.lmtp.Serve}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("sample legacy server: %w", err)
		}
		*s.addr = ln.Addr().String()
		go s.serve(ln)
	}
	return l, nil
}

// Close stops the sample server.
func (l *Legacy) Close() {
	l.closed.Do(func() {
		if l.imap != nil {
			l.imap.Close()
		}
		if l.pop3 != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			l.pop3.Shutdown(ctx)
			cancel()
		}
		if l.lmtp != nil {
			l.lmtp.Close()
		}
	})
}

// seed fills an account's folders with generated mail.
func seed(u *imapmemserver.User, account string, n int, rng *rand.Rand, salt int) error {
	total := 0
	for _, f := range folders {
		total += f.share
	}
	start := time.Date(2024, 1, 1, 9, 0, 0, 0, time.UTC)
	k := 0
	for _, f := range folders {
		if err := u.Create(f.name, nil); err != nil {
			return err
		}
		if err := u.Subscribe(f.name); err != nil {
			return err
		}
		for i := 0; i < n*f.share/total; i++ {
			date := start.Add(time.Duration(k) * 37 * time.Minute)
			body := sampleMessage(account, f.name, k, salt, date, rng)
			var flags []imap.Flag
			if rng.IntN(3) > 0 {
				flags = append(flags, imap.FlagSeen)
			}
			if rng.IntN(20) == 0 {
				flags = append(flags, imap.FlagFlagged)
			}
			if rng.IntN(30) == 0 {
				flags = append(flags, "$Important")
			}
			if _, err := u.Append(f.name, literal(body), &imap.AppendOptions{Flags: flags, Time: date}); err != nil {
				return err
			}
			k++
		}
	}
	return nil
}

var (
	senders  = []string{"Ada Lovelace <ada@analytical.example>", "Grace Hopper <grace@navy.example>", "Ken Thompson <ken@bell.example>", "Barbara Liskov <barbara@mit.example>"}
	subjects = []string{"Quarterly report", "Lunch on Friday?", "Re: the migration", "Minutes of the meeting", "Invoice 2024-%03d", "Photos from the trip", "Build is green again"}
	words    = strings.Fields("the mail server moves while people keep working nothing is lost nothing is duplicated clients notice nothing at all every folder flag and date stays as it was")
)

func sampleMessage(account, folder string, k, salt int, date time.Time, rng *rand.Rand) []byte {
	var b bytes.Buffer
	from, to := senders[rng.IntN(len(senders))], account
	if folder == "Sent" {
		from, to = account, senders[rng.IntN(len(senders))]
	}
	subject := subjects[rng.IntN(len(subjects))]
	if strings.Contains(subject, "%") {
		subject = fmt.Sprintf(subject, k)
	}
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <demo-%d-%d@legacy.demo>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		from, to, subject, date.Format(time.RFC1123Z), salt, k)
	lines := 3 + rng.IntN(40)
	for i := 0; i < lines; i++ {
		n := 6 + rng.IntN(8)
		for j := 0; j < n; j++ {
			if j > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[rng.IntN(len(words))])
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// literalReader is a message for imapmemserver's Append.
type literalReader struct {
	*bytes.Reader
	size int64
}

func (r literalReader) Size() int64 { return r.size }

func literal(b []byte) imap.LiteralReader {
	return literalReader{Reader: bytes.NewReader(b), size: int64(len(b))}
}

// user returns a sample account's mailboxes, or nil.
func (l *Legacy) user(name string) *imapmemserver.User {
	return l.users[strings.ToLower(strings.TrimSpace(name))]
}

// intake is the sample server's LMTP intake: mail for its accounts goes
// into their INBOX.
type intake struct{ legacy *Legacy }

func (i *intake) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &lmtpSession{legacy: i.legacy}, nil
}

type lmtpSession struct {
	legacy *Legacy
	rcpts  []*imapmemserver.User
}

func (s *lmtpSession) Reset()                               { s.rcpts = nil }
func (s *lmtpSession) Logout() error                        { return nil }
func (s *lmtpSession) Mail(string, *smtp.MailOptions) error { s.rcpts = nil; return nil }
func (s *lmtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	u := s.legacy.user(to)
	if u == nil {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	}
	s.rcpts = append(s.rcpts, u)
	return nil
}

func (s *lmtpSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	for _, u := range s.rcpts {
		if _, err := u.Append("INBOX", literal(body), &imap.AppendOptions{Time: time.Now()}); err != nil {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: err.Error()}
		}
	}
	return nil
}

// maildrops serves the sample accounts' INBOX over POP3, through an IMAP
// session with the sample server itself.
type maildrops struct{ legacy *Legacy }

func (m *maildrops) Login(ctx context.Context, user, password string, _ net.Addr) (pop3.Maildrop, error) {
	c, err := imapclient.DialInsecure(m.legacy.IMAPAddr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		return nil, pop3.ErrAuthFailed
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		c.Close()
		return nil, err
	}
	d := &maildrop{c: c}
	if sel.NumMessages > 0 {
		var all imap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := c.Fetch(all, &imap.FetchOptions{UID: true,
			BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		if err != nil {
			c.Close()
			return nil, err
		}
		for _, msg := range msgs {
			var body []byte
			for _, b := range msg.BodySection {
				body = b.Bytes
			}
			d.uids = append(d.uids, msg.UID)
			d.bodies = append(d.bodies, body)
			d.infos = append(d.infos, pop3.MessageInfo{Size: int64(len(body)), UIDL: fmt.Sprintf("%d.%d", sel.UIDValidity, msg.UID)})
		}
	}
	return d, nil
}

type maildrop struct {
	c      *imapclient.Client
	uids   []imap.UID
	bodies [][]byte
	infos  []pop3.MessageInfo
}

func (d *maildrop) Messages() []pop3.MessageInfo { return d.infos }

func (d *maildrop) Open(_ context.Context, i int) (io.ReadCloser, error) {
	if i < 0 || i >= len(d.bodies) {
		return nil, errors.New("no such message")
	}
	return io.NopCloser(bytes.NewReader(d.bodies[i])), nil
}

func (d *maildrop) Commit(_ context.Context, deleted []int) error {
	if len(deleted) == 0 {
		return nil
	}
	var set imap.UIDSet
	for _, i := range deleted {
		set.AddNum(d.uids[i])
	}
	if err := d.c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return err
	}
	return d.c.UIDExpunge(set).Close()
}

func (d *maildrop) Close() { d.c.Close() }
