package imapstore

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestCopyRange copies ranges that take several reads, and fails on a
// file shorter than the range instead of sending short literals.
func TestCopyRange(t *testing.T) {
	src := make([]byte, 200<<10+17)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for _, c := range []struct{ off, n int64 }{{0, int64(len(src))}, {1, 64 << 10}, {65 << 10, 100<<10 + 3}, {int64(len(src)), 0}} {
		var out bytes.Buffer
		if err := copyRange(&out, bytes.NewReader(src), c.off, c.n); err != nil {
			t.Fatalf("copyRange(%d, %d): %v", c.off, c.n, err)
		}
		if !bytes.Equal(out.Bytes(), src[c.off:c.off+c.n]) {
			t.Errorf("copyRange(%d, %d): %d bytes differ from the source", c.off, c.n, out.Len())
		}
	}
	err := copyRange(io.Discard, bytes.NewReader(src), 100<<10, 101<<10)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("range past the end of the file: %v, want %v", err, io.ErrUnexpectedEOF)
	}
}
