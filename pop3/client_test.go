package pop3

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"mailcapture/legacytest"
)

func TestDotReader(t *testing.T) {
	long := strings.Repeat("y", 200000)
	cases := []struct{ wire, want string }{
		{"a\r\nb\r\n.\r\n", "a\r\nb\r\n"},
		{"..dot\r\n...\r\n.\r\n", ".dot\r\n..\r\n"},
		{"bare\nlf\n.\r\n", "bare\nlf\n"},
		{long + "\r\n." + long + "\r\n.\r\n", long + "\r\n" + long + "\r\n"},
		{"x.\r\n .\r\n.\r\n", "x.\r\n .\r\n"},
		{".\r\n", ""},
	}
	for i, tc := range cases {
		r := &dotReader{r: bufio.NewReaderSize(iotest.HalfReader(strings.NewReader(tc.wire+"+OK next\r\n")), 4096), atLineStart: true}
		got, err := io.ReadAll(r)
		if err != nil || string(got) != tc.want {
			t.Errorf("case %d: got %d bytes (%v), want %d", i, len(got), err, len(tc.want))
		}
	}
	r := &dotReader{r: bufio.NewReader(strings.NewReader("no terminator\r\n")), atLineStart: true}
	if _, err := io.ReadAll(r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut message: %v", err)
	}
}

// TestAgainstDovecot reads a real Dovecot's maildrop and checks every
// message byte for byte against what IMAP serves, and every UIDL.
func TestAgainstDovecot(t *testing.T) {
	ctx := context.Background()
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, "pop@example.org", "secret")
	msgs := legacytest.Generate(5, 40, 150000)
	msgs = append(msgs, legacytest.Message{Body: []byte("Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"), InternalDate: time.Now()})
	d.Populate(t, "pop@example.org", "secret", []legacytest.Folder{{Name: "INBOX", Messages: msgs, Expunge: []int{2}}})
	snap := d.Snapshot(t, "pop@example.org", "secret")["INBOX"]

	c, err := Dial(ctx, d.POP3Addr, DialOptions{TLS: "none", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	caps, err := c.Capa()
	if err != nil || caps["UIDL"] == nil {
		t.Fatalf("CAPA: %v %v", caps, err)
	}
	if err := c.Login("pop@example.org", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	c.Close()
	c, err = Dial(ctx, d.POP3Addr, DialOptions{TLS: "none", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AuthPlain("pop@example.org", "secret"); err != nil {
		t.Fatal(err)
	}
	count, size, err := c.Stat()
	if err != nil || count != len(snap.Messages) {
		t.Fatalf("STAT %d %d %v; IMAP has %d", count, size, err, len(snap.Messages))
	}
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	uidls, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range snap.Messages {
		if list[i].Size != m.Size {
			t.Errorf("message %d: LIST size %d, RFC822.SIZE %d", i+1, list[i].Size, m.Size)
		}
		if want := fmt.Sprintf("%08x%08x", m.UID, snap.UIDValidity); uidls[i].UIDL != want {
			t.Errorf("message %d: UIDL %s, want %s", i+1, uidls[i].UIDL, want)
		}
		r, err := c.Retr(i + 1)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(body, m.Body) {
			t.Fatalf("message %d: RETR gave %d bytes (%v), IMAP %d", i+1, len(body), err, len(m.Body))
		}
	}
	top, err := c.Top(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	head, _ := io.ReadAll(top)
	if !bytes.HasPrefix(snap.Messages[0].Body, head) || !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		t.Fatalf("TOP 1 0: %q", head)
	}
	var perr *Error
	if _, err := c.Retr(999); !errors.As(err, &perr) {
		t.Fatalf("RETR 999: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// TestSilentServerTimesOut: a server that greets and then says nothing
// fails the command after the timeout.
func TestSilentServerTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("+OK hello\r\n"))
		io.Copy(io.Discard, c)
	}()
	c, err := Dial(context.Background(), ln.Addr().String(), DialOptions{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.Stat(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
}
