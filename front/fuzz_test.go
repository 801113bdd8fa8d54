package front

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzPreauthCommand: the not-authenticated state's parser never panics,
// never returns more than a command's bound, and always consumes input
// (no endless loop on any bytes).
func FuzzPreauthCommand(f *testing.F) {
	for _, seed := range []string{
		"a LOGIN user pass\r\n",
		"a LOGIN \"us\\\"er\" {4}\r\npass\r\n",
		"b AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
		"c ID (\"name\" \"client\" \"version\" \"1\")\r\n",
		"d LOGIN {5+}\r\nuser1 {5+}\r\npass1\r\n",
		"e LOGIN ((\"x\" {2}\r\nab\r\n",
		"f STARTTLS\r\ng NOOP\r\nh LOGOUT\r\n",
		")(\"{99999999999}\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		src := bytes.NewReader(raw)
		r := bufio.NewReaderSize(src, 4096)
		left := func() int { return src.Len() + r.Buffered() }
		for {
			before := left()
			cmd, err := readPreauthCommand(r, func() error { return nil })
			if cmd != nil {
				n := len(cmd.tag) + len(cmd.name)
				for _, a := range cmd.args {
					n += len(a)
				}
				if n > maxPreauthCommand {
					t.Fatalf("command of %d bytes accepted", n)
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return
			}
			if err != nil && !errors.Is(err, errBadCommand) {
				t.Fatalf("unexpected error %v", err)
			}
			if left() >= before {
				t.Fatalf("a command consumed nothing (%d bytes left)", before)
			}
		}
	})
}
