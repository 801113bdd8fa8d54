package front

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"mailcapture/imapwire"
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
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		src := bytes.NewReader(raw)
		br := bufio.NewReaderSize(src, 4096)
		r := newPreauthReader(br, func() error { return nil })
		left := func() int { return src.Len() + br.Buffered() }
		for {
			before := left()
			cmd, err := readPreauth(r)
			if cmd != nil && err == nil {
				n := len(cmd.tag) + len(cmd.name)
				for _, a := range cmd.args {
					n += len(a)
				}
				if n > maxPreauthCommand {
					t.Fatalf("command of %d bytes accepted", n)
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errUnknownCommand) {
				return
			}
			var long *imapwire.ErrLineTooLong
			var limit *imapwire.LimitError
			var syntax *imapwire.SyntaxError
			if err != nil && !errors.As(err, &long) && !errors.As(err, &limit) && !errors.As(err, &syntax) {
				t.Fatalf("unexpected error %v", err)
			}
			if err != nil {
				r.Discard()
			}
			if left() >= before {
				t.Fatalf("a command consumed nothing (%d bytes left)", before)
			}
		}
	})
}
