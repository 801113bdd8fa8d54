package export

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailcapture/capture"
	"mailcapture/legacyclient"
	"mailcapture/legacytest"
	"mailcapture/pop3"
	"mailcapture/store"
	"mailcapture/storetest"
)

const (
	user     = "export@example.org"
	password = "export pass"
)

// TestExportServedByDovecot: an account captured from one Dovecot is
// exported, and a second, fresh Dovecot pointed at the export serves it
// exactly as the first: every folder, subscription, UIDVALIDITY, UID,
// flag, keyword, internal date and byte over IMAP, and every UIDL over
// POP3.
func TestExportServedByDovecot(t *testing.T) {
	for _, opts := range []legacytest.Options{
		{Separator: ".", Prefix: "INBOX.", UIDLFormat: "%g"},
		{Separator: "/", UIDLFormat: "%g"},
	} {
		t.Run("separator "+opts.Separator, func(t *testing.T) {
			ctx := context.Background()
			source := legacytest.Start(t, opts)
			source.AddUser(t, user, password)
			msgs := legacytest.Generate(31, 90, 30000)
			source.Populate(t, user, password, []legacytest.Folder{
				{Name: "INBOX", Subscribed: true, Messages: msgs[:40], Expunge: []int{3, 4}},
				{Name: "Sent", Subscribed: true, Messages: msgs[40:55]},
				{Name: "Archive/2024", Messages: msgs[55:80]},
				{Name: "Archive/2024/Taxes", Subscribed: true, Messages: msgs[80:90]},
				{Name: "Trash"},
			})
			st := storetest.Open(t, "")
			st.CreateAccount(ctx, user, password, store.StateCapturing)
			e := &capture.Engine{Store: st, IMAP: legacyclient.Endpoint{Address: source.IMAPAddr, TLS: "none", Timeout: 10 * time.Second},
				POP3: legacyclient.Endpoint{Address: source.POP3Addr, TLS: "none", Timeout: 10 * time.Second}}
			if _, err := e.Converge(ctx, user, password, 5); err != nil {
				t.Fatal(err)
			}
			want := source.Snapshot(t, user, password)
			wantUIDLs := maildrop(t, source.POP3Addr)

			out := t.TempDir()
			res, err := Maildir(ctx, st, out, []string{user})
			if err != nil {
				t.Fatal(err)
			}
			if res.Accounts != 1 || res.Messages != 88 {
				t.Fatalf("export wrote %+v", res)
			}
			if _, err := Maildir(ctx, st, out, []string{user}); err == nil || !strings.Contains(err.Error(), "exists already") {
				t.Fatalf("a second export into the same directory: %v", err)
			}
			target := legacytest.Start(t, opts)
			target.AddUser(t, user, password)
			target.InstallMaildir(t, user, filepath.Join(out, user))
			got := target.Snapshot(t, user, password)
			if len(got) != len(want) {
				t.Errorf("%d folders from the export, %d at the source", len(got), len(want))
			}
			for name, wf := range want {
				gf := got[name]
				if gf == nil {
					t.Errorf("folder %q missing from the export", name)
					continue
				}
				if gf.UIDValidity != wf.UIDValidity || gf.UIDNext != wf.UIDNext || gf.Subscribed != wf.Subscribed || len(gf.Messages) != len(wf.Messages) {
					t.Errorf("folder %q: export uidvalidity %d uidnext %d subscribed %v %d messages; source %d %d %v %d",
						name, gf.UIDValidity, gf.UIDNext, gf.Subscribed, len(gf.Messages), wf.UIDValidity, wf.UIDNext, wf.Subscribed, len(wf.Messages))
					continue
				}
				for i, wm := range wf.Messages {
					gm := gf.Messages[i]
					if gm.UID != wm.UID || strings.Join(gm.Flags, " ") != strings.Join(wm.Flags, " ") || !gm.InternalDate.Equal(wm.InternalDate) ||
						gm.Size != wm.Size || !bytes.Equal(gm.Body, wm.Body) {
						t.Errorf("folder %q message %d: export UID %d flags %v date %v size %d; source UID %d flags %v date %v size %d",
							name, i, gm.UID, gm.Flags, gm.InternalDate, gm.Size, wm.UID, wm.Flags, wm.InternalDate, wm.Size)
					}
				}
			}
			gotUIDLs := maildrop(t, target.POP3Addr)
			if strings.Join(gotUIDLs, " ") != strings.Join(wantUIDLs, " ") {
				t.Errorf("POP3 UIDLs from the export:\n%v\nsource:\n%v", gotUIDLs, wantUIDLs)
			}
		})
	}
}

// maildrop lists a user's POP3 UIDLs, each with its message's size.
func maildrop(t *testing.T, addr string) []string {
	t.Helper()
	c, err := pop3.Dial(context.Background(), addr, pop3.DialOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, password); err != nil {
		t.Fatal(err)
	}
	uidls, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, u := range uidls {
		r, err := c.Top(u.Num, 0)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, r)
		out = append(out, u.UIDL)
	}
	return out
}
