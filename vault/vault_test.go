package vault

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	v, err := New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	sealed := v.Seal("User@Example.org", "s3cret pass")
	if bytes.Contains(sealed, []byte("s3cret")) {
		t.Fatal("the sealed secret holds the plain text")
	}
	if got, err := v.Open("user@example.org", sealed); err != nil || got != "s3cret pass" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := v.Open("other@example.org", sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened for another account: %v", err)
	}
	damaged := append([]byte(nil), sealed...)
	damaged[len(damaged)-1] ^= 1
	if _, err := v.Open("user@example.org", damaged); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened a damaged secret: %v", err)
	}
	other, _ := New(bytes.Repeat([]byte{8}, 32))
	if _, err := other.Open("user@example.org", sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened with another key: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, body []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, body, mode)
		os.Chmod(p, mode)
		return p
	}
	key := bytes.Repeat([]byte{0xab}, 32)
	for _, p := range []string{
		write("raw", key, 0o600),
		write("hex", []byte(hex.EncodeToString(key)+"\n"), 0o400),
		write("b64", []byte("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"), 0o600),
	} {
		if _, err := Load(p); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"world readable": {write("open", key, 0o644), "readable by others"},
		"short":          {write("short", []byte("abc"), 0o600), "not a 256-bit key"},
		"missing":        {filepath.Join(dir, "nope"), "no such file"},
	} {
		if _, err := Load(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
