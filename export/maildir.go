// Package export writes accounts out of the store as Dovecot-compatible
// Maildir++ trees, so that mail can leave mailcapture as easily as it came
// in: UIDVALIDITY, UIDs, flags, keywords, internal dates, subscriptions
// and POP3 UIDLs are kept.
package export

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"mailcapture/store"
)

// Result counts what an export wrote.
type Result struct {
	Accounts int
	Folders  int
	Messages int
	Bytes    int64
}

// Maildir writes each account (all of them when accounts is empty) to
// dir/<account>/ as a Maildir++ tree: INBOX in the root, other folders as
// ".Name.Sub" (the account's namespace prefix dropped, its separator
// replaced by "."), each with dovecot-uidlist (UIDVALIDITY, UIDNEXT, UIDs,
// POP3 UIDLs) and dovecot-keywords; subscriptions in the root. Message
// files carry their flags in the name and the internal date as their
// time. A target directory that exists already is refused.
func Maildir(ctx context.Context, st *store.Store, dir string, accounts []string) (Result, error) {
	var res Result
	all, err := st.Accounts(ctx)
	if err != nil {
		return res, err
	}
	want := map[string]bool{}
	for _, a := range accounts {
		want[strings.ToLower(a)] = true
	}
	found := 0
	for _, acct := range all {
		if len(want) > 0 && !want[strings.ToLower(acct.Name)] {
			continue
		}
		found++
		if err := exportAccount(ctx, st, filepath.Join(dir, acct.Name), acct, &res); err != nil {
			return res, fmt.Errorf("export %s: %w", acct.Name, err)
		}
		res.Accounts++
	}
	if len(want) > 0 && found < len(want) {
		return res, fmt.Errorf("export: %d of the named accounts are not in the store", len(want)-found)
	}
	return res, nil
}

func exportAccount(ctx context.Context, st *store.Store, root string, acct store.Account, res *Result) error {
	if strings.ContainsAny(acct.Name, "/\x00") || acct.Name == "." || acct.Name == ".." {
		return fmt.Errorf("account name %q cannot be a directory name", acct.Name)
	}
	if _, err := os.Stat(root); err == nil {
		return fmt.Errorf("%s exists already: export into a new directory", root)
	}
	mailboxes, err := st.Mailboxes(ctx, acct.ID)
	if err != nil {
		return err
	}
	sep := acct.LegacySeparator
	if sep == "" {
		sep = "/"
	}
	var subscribed []string
	for _, mb := range mailboxes {
		dir, err := folderDir(root, mb.Name, acct.LegacyPrefix, sep)
		if err != nil {
			return err
		}
		if err := exportFolder(ctx, st, dir, mb, res); err != nil {
			return fmt.Errorf("folder %s: %w", mb.Name, err)
		}
		if mb.Subscribed {
			// Dovecot's format 2: names relative to the namespace
			// prefix, the hierarchy separator written as a tab.
			name := mb.Name
			if name != "INBOX" {
				name = strings.ReplaceAll(strings.TrimPrefix(name, acct.LegacyPrefix), sep, "\t")
			}
			subscribed = append(subscribed, name)
		}
		res.Folders++
	}
	sort.Strings(subscribed)
	subs := "V\t2\n\n"
	for _, name := range subscribed {
		subs += name + "\n"
	}
	return writeFile(filepath.Join(root, "subscriptions"), []byte(subs))
}

// folderDir maps a mailbox name to its Maildir++ directory.
func folderDir(root, name, prefix, sep string) (string, error) {
	if name == "INBOX" {
		return root, nil
	}
	rel := strings.TrimPrefix(name, prefix)
	if rel == "" {
		return "", fmt.Errorf("folder %q is the namespace prefix itself", name)
	}
	parts := strings.Split(rel, sep)
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, "/\x00") || (sep != "." && strings.Contains(p, ".")) || p == ".." {
			return "", fmt.Errorf("folder %q has a name part %q that Maildir++ cannot hold", name, p)
		}
	}
	return filepath.Join(root, "."+strings.Join(parts, ".")), nil
}

// flagLetters are the Maildir info letters of the system flags, in the
// order Maildir requires (ASCII).
var flagLetters = []struct {
	flag   string
	letter byte
}{{`\Draft`, 'D'}, {`\Flagged`, 'F'}, {`\Answered`, 'R'}, {`\Seen`, 'S'}, {`\Deleted`, 'T'}}

func exportFolder(ctx context.Context, st *store.Store, dir string, mb store.Mailbox, res *Result) error {
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	msgs, err := st.Messages(ctx, mb.ID, store.AllUIDs)
	if err != nil {
		return err
	}
	// Keywords get letters a..z in order of first use (Dovecot's limit).
	keywords := map[string]byte{}
	var keywordList []string
	uidlist := fmt.Sprintf("3 V%d N%d\n", mb.UIDValidity, mb.UIDNext)
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			return err
		}
		var letters []byte
		for _, fl := range flagLetters {
			for _, f := range m.Flags {
				if strings.EqualFold(f, fl.flag) {
					letters = append(letters, fl.letter)
				}
			}
		}
		var kw []byte
		for _, f := range m.Flags {
			if strings.HasPrefix(f, `\`) {
				continue
			}
			l, ok := keywords[f]
			if !ok {
				if len(keywordList) == 26 {
					return fmt.Errorf("more than 26 keywords: Maildir cannot hold %q", f)
				}
				l = byte('a' + len(keywordList))
				keywords[f] = l
				keywordList = append(keywordList, f)
			}
			kw = append(kw, l)
		}
		sort.Slice(kw, func(a, b int) bool { return kw[a] < kw[b] })
		base := fmt.Sprintf("%d.M%dP0.mailcapture,S=%d", m.InternalDate.Unix(), i+1, m.Size)
		name := base + ":2," + string(letters) + string(kw)
		if err := copyBody(st, m.ID, filepath.Join(dir, "cur", name)); err != nil {
			return err
		}
		if err := os.Chtimes(filepath.Join(dir, "cur", name), m.InternalDate, m.InternalDate); err != nil {
			return err
		}
		uidlist += fmt.Sprintf("%d P%s :%s\n", m.UID, store.UIDL(m, mb.UIDValidity), base)
		res.Messages++
		res.Bytes += m.Size
	}
	if err := writeFile(filepath.Join(dir, "dovecot-uidlist"), []byte(uidlist)); err != nil {
		return err
	}
	kwFile := ""
	for i, k := range keywordList {
		kwFile += fmt.Sprintf("%d %s\n", i, k)
	}
	if err := writeFile(filepath.Join(dir, "dovecot-keywords"), []byte(kwFile)); err != nil {
		return err
	}
	// Maildir++ marks every folder but INBOX with this file.
	if filepath.Base(dir)[0] == '.' {
		return writeFile(filepath.Join(dir, "maildirfolder"), nil)
	}
	return nil
}

func copyBody(st *store.Store, id int64, path string) error {
	src, err := st.OpenBody(id)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

func writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
