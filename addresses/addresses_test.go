package addresses

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestAccountNames(t *testing.T) {
	n := Naming{DefaultDomain: "example.org", Delimiters: "+"}
	for in, want := range map[string]string{
		"bob":                   "bob@example.org",
		"bob@EXAMPLE.org":       "bob@example.org",
		"Bob@Example.Org":       "Bob@example.org",
		" bob@example.org ":     "bob@example.org",
		"bob+lists@example.org": "bob+lists@example.org",
	} {
		if got, err := n.Account(in); err != nil || got != want {
			t.Errorf("Account(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "@example.org", "bob@", "bo b"} {
		if _, err := n.Account(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("Account(%q): %v, want ErrMalformed", bad, err)
		}
	}
	if _, err := (Naming{}).Account("bob"); !errors.Is(err, ErrNoDomain) {
		t.Errorf("a bare name without a default domain: %v", err)
	}
	for in, want := range map[string]string{
		"bob+lists@example.org": "bob@example.org",
		"bob+a+b@example.org":   "bob@example.org",
		"+bob@example.org":      "+bob@example.org",
		"bob@example.org":       "bob@example.org",
	} {
		if got := n.Base(in); got != want {
			t.Errorf("Base(%q) = %q, want %q", in, got, want)
		}
	}
	if got := (Naming{Delimiters: "+-"}).Base("bob-lists@example.org"); got != "bob@example.org" {
		t.Errorf("several delimiters: %q", got)
	}
	if got := (Naming{}).Base("bob+lists@example.org"); got != "bob+lists@example.org" {
		t.Errorf("no delimiter: %q", got)
	}
	for mode, want := range map[string]string{"": "Bob", "as_typed": "Bob", "address": "bob@example.org", "local_part": "bob"} {
		if got := (Naming{LoginName: mode}).LegacyLogin("Bob", "bob@example.org"); got != want {
			t.Errorf("LegacyLogin with %q: %q, want %q", mode, got, want)
		}
	}
}

const sample = `# the aliases of example.org
robert@example.org    bob@example.org
team@example.org      bob@example.org, alice
	carol@example.org
everyone@example.org  team@example.org dave@example.org
fwd@example.org       fwd@elsewhere.net
self@example.org      self@example.org, bob@example.org
example.org           virtual-alias-domain
@example.org          postmaster@example.org
`

func TestParseVirtual(t *testing.T) {
	tbl, warnings, err := Parse(strings.NewReader(sample), "example.org")
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Parse: %v %v", err, warnings)
	}
	want := []Entry{
		{"robert@example.org", []string{"bob@example.org"}, 2},
		{"team@example.org", []string{"bob@example.org", "alice@example.org", "carol@example.org"}, 3},
		{"everyone@example.org", []string{"team@example.org", "dave@example.org"}, 5},
		{"fwd@example.org", []string{"fwd@elsewhere.net"}, 6},
		{"self@example.org", []string{"self@example.org", "bob@example.org"}, 7},
		{"@example.org", []string{"postmaster@example.org"}, 9},
	}
	if !reflect.DeepEqual(tbl.Entries(), want) {
		t.Fatalf("entries:\n%v\nwant\n%v", tbl.Entries(), want)
	}

	_, _, err = Parse(strings.NewReader("ok@example.org bob@example.org\nlonely@example.org\nbad@@x a@b\nx@example.org not@an@address\n  orphan\n"), "example.org")
	var lines []string
	for _, l := range strings.Split(fmt.Sprint(err), "\n") {
		lines = append(lines, strings.SplitN(l, ":", 2)[0])
	}
	if err == nil || !reflect.DeepEqual(lines, []string{"line 2", "line 3", "line 4"}) {
		t.Fatalf("errors: %v (lines %v)", err, lines)
	}
	tbl, warnings, err = Parse(strings.NewReader("bob  alice@example.org\nx@example.org a@example.org\nX@example.org b@example.org\n"), "example.org")
	if err != nil || len(warnings) != 2 || warnings[0].Line != 1 || warnings[1].Line != 3 || tbl.Len() != 1 {
		t.Fatalf("warnings: %v %v %d", warnings, err, tbl.Len())
	}
	if _, _, err := Parse(strings.NewReader("x@example.org alice\n"), ""); err == nil {
		t.Fatal("a target without a domain and no default domain was accepted")
	}
}

func TestExpand(t *testing.T) {
	tbl, _, err := Parse(strings.NewReader(sample), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	n := Naming{DefaultDomain: "example.org", Delimiters: "+"}
	knownAccounts := map[string]bool{"bob@example.org": true, "zoe@example.org": true}
	known := func(base string) bool { return knownAccounts[strings.ToLower(base)] }
	for _, c := range []struct {
		rcpt string
		want []string
		via  string
	}{
		{"bob@example.org", []string{"bob@example.org"}, "address"},
		{"bob+lists@example.org", []string{"bob+lists@example.org"}, "delimiter"},
		{"Robert@Example.org", []string{"bob@example.org"}, "alias"},
		{"robert+news@example.org", []string{"bob+news@example.org"}, "alias"},
		{"team@example.org", []string{"bob@example.org", "alice@example.org", "carol@example.org"}, "alias"},
		{"everyone@example.org", []string{"bob@example.org", "alice@example.org", "carol@example.org", "dave@example.org"}, "alias"},
		{"fwd@example.org", []string{"fwd@elsewhere.net"}, "alias"},
		{"self@example.org", []string{"self@example.org", "bob@example.org"}, "alias"},
		{"nobody@example.org", []string{"postmaster@example.org"}, "catch-all"},
		{"nobody+x@example.org", []string{"postmaster+x@example.org"}, "catch-all"},
		{"zoe@example.org", []string{"zoe@example.org"}, "address"},
		{"zoe+x@example.org", []string{"zoe+x@example.org"}, "delimiter"},
		{"someone@other.net", []string{"someone@other.net"}, "address"},
	} {
		x, err := tbl.Expand(n, c.rcpt, known)
		if err != nil || !reflect.DeepEqual(x.Finals, c.want) || x.Via != c.via {
			t.Errorf("Expand(%q) = %v via %s, %v; want %v via %s", c.rcpt, x.Finals, x.Via, err, c.want, c.via)
		}
	}
	loop, _, _ := Parse(strings.NewReader("a@example.org b@example.org\nb@example.org a@example.org\n"), "")
	if _, err := loop.Expand(n, "a@example.org", nil); !errors.Is(err, ErrLoop) {
		t.Errorf("a loop: %v", err)
	}
	var big strings.Builder
	big.WriteString("all@example.org")
	for i := range maxTargets + 1 {
		fmt.Fprintf(&big, " u%d@example.org", i)
	}
	wide, _, _ := Parse(strings.NewReader(big.String()+"\n"), "")
	if _, err := wide.Expand(n, "all@example.org", nil); !errors.Is(err, ErrTooMany) {
		t.Errorf("a wide alias: %v", err)
	}
	if x, err := Empty().Expand(n, "bob+x@example.org", nil); err != nil || !reflect.DeepEqual(x.Finals, []string{"bob+x@example.org"}) {
		t.Errorf("empty table: %v %v", x, err)
	}
}
