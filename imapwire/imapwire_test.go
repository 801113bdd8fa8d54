package imapwire

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestModifiedUTF7(t *testing.T) {
	for _, c := range []struct{ utf8, utf7 string }{
		{"INBOX", "INBOX"}, {"café", "caf&AOk-"}, {"a&b", "a&-b"}, {"日本語", "&ZeVnLIqe-"},
		{"Entwürfe/Über", "Entw&APw-rfe/&ANw-ber"}, {"😀", "&2D3eAA-"},
	} {
		if got := EncodeUTF7(c.utf8); got != c.utf7 {
			t.Errorf("EncodeUTF7(%q) = %q, want %q", c.utf8, got, c.utf7)
		}
		if got, err := DecodeUTF7(c.utf7); err != nil || got != c.utf8 {
			t.Errorf("DecodeUTF7(%q) = %q, %v", c.utf7, got, err)
		}
	}
	// What RFC 3501 5.1.3 does not allow.
	for _, bad := range []string{"a&Jjo", "&AGE-", "&AGE-&AOk-", "caf\xc3\xa9", "&2D3-", "&AO-", "&,,,-", "x\x01"} {
		if got, err := DecodeUTF7(bad); !errors.Is(err, ErrBadUTF7) {
			t.Errorf("DecodeUTF7(%q) = %q, %v; want ErrBadUTF7", bad, got, err)
		}
	}
}

func reader(s string) *Reader {
	r := NewReader(bufio.NewReader(strings.NewReader(s)))
	r.Continue = func() error { return nil }
	return r
}

func TestReaderStringsAndLiterals(t *testing.T) {
	r := reader("a1 LOGIN \"us\\\"er\" {4}\r\np\r\ns SELECT\r\n")
	if err := r.Begin(); err != nil {
		t.Fatal(err)
	}
	tag, _ := r.Tag()
	r.SP()
	name, _ := r.AtomUpper()
	r.SP()
	user, err := r.Astring()
	if err != nil {
		t.Fatal(err)
	}
	r.SP()
	pass, err := r.Astring()
	if err != nil {
		t.Fatal(err)
	}
	r.SP()
	last, _ := r.Astring()
	if tag != "a1" || name != "LOGIN" || user != `us"er` || pass != "p\r\ns" || last != "SELECT" || r.End() != nil {
		t.Fatalf("%q %q %q %q %q", tag, name, user, pass, last)
	}
}

func TestReaderLimits(t *testing.T) {
	r := reader("abc NOOP " + strings.Repeat("x", 100) + "\r\nnext NOOP\r\n")
	r.MaxLine = 50
	var long *ErrLineTooLong
	if err := r.Begin(); !errors.As(err, &long) || long.Tag != "abc" {
		t.Fatalf("over-long line: %v", err)
	}
	if err := r.Begin(); err != nil {
		t.Fatalf("the next command after an over-long line: %v", err)
	}
	r = reader("a LOGIN {100}\r\n")
	r.MaxLiteral = 10
	r.Begin()
	r.Tag()
	r.SP()
	r.Atom()
	r.SP()
	var lim *LimitError
	if _, err := r.Astring(); !errors.As(err, &lim) {
		t.Fatalf("literal over the limit: %v", err)
	}
	// A refused non-synchronising literal is read and dropped.
	r = reader("a X {5+}\r\nhello more\r\nb NOOP\r\n")
	r.Begin()
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	if err := r.Begin(); err != nil {
		t.Fatal(err)
	}
	if tag, _ := r.Tag(); tag != "b" {
		t.Fatalf("after discarding: tag %q", tag)
	}
	r = reader("a LOGIN x\r\n")
	r.Begin()
	r.Tag()
	r.SP()
	r.Atom()
	r.SP()
	r.Astring()
	r.SP()
	if _, err := r.Astring(); err == nil {
		t.Fatal("missing argument accepted")
	}
	if err := r.Begin(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of input: %v", err)
	}
}

func TestSeqSets(t *testing.T) {
	r := reader("1:3,5,*:7,9:*\r\n")
	r.Begin()
	set, err := r.SeqSet()
	if err != nil {
		t.Fatal(err)
	}
	res := set.Resolve(10)
	for n, want := range map[uint32]bool{1: true, 3: true, 4: false, 5: true, 6: false, 7: true, 8: true, 9: true, 10: true} {
		if res.Contains(n) != want {
			t.Errorf("%d in %v: %v", n, res, !want)
		}
	}
	if got := string(AppendSet(nil, []uint32{1, 2, 3, 5, 7, 8})); got != "1:3,5,7:8" {
		t.Errorf("AppendSet: %q", got)
	}
	for _, bad := range []string{"0", "1:", ",1", "a"} {
		r := reader(bad + "\r\n")
		r.Begin()
		if _, err := r.SeqSet(); err == nil {
			t.Errorf("%q accepted as a sequence set", bad)
		}
	}
}
