package legacytest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// RawRead logs in as user over one plain IMAP connection and reads every
// body of every folder (UID FETCH 1:* BODY.PEEK[]), skipping literals
// without looking at them: how fast the legacy server can hand out a
// mailbox, the reference the capture benchmarks compare against. It
// returns the bytes of the bodies read.
func RawRead(addr, user, password string, folders []string) (int64, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<20)
	w := bufio.NewWriter(c)
	tag := 0
	run := func(cmd string) (int64, error) {
		tag++
		t := "r" + strconv.Itoa(tag)
		fmt.Fprintf(w, "%s %s\r\n", t, cmd)
		if err := w.Flush(); err != nil {
			return 0, err
		}
		var literalBytes int64
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return 0, err
			}
			if strings.HasPrefix(line, t+" ") {
				if !strings.HasPrefix(line, t+" OK") {
					return 0, fmt.Errorf("%s: %s", cmd, line)
				}
				return literalBytes, nil
			}
			if i := strings.LastIndexByte(line, '{'); i >= 0 && strings.HasSuffix(line, "}\r\n") {
				n, err := strconv.ParseInt(line[i+1:len(line)-3], 10, 64)
				if err == nil {
					if _, err := io.CopyN(io.Discard, r, n); err != nil {
						return 0, err
					}
					literalBytes += n
				}
			}
		}
	}
	if _, err := r.ReadString('\n'); err != nil {
		return 0, err
	}
	if _, err := run(fmt.Sprintf("LOGIN %q %q", user, password)); err != nil {
		return 0, err
	}
	var total int64
	for _, f := range folders {
		if _, err := run(fmt.Sprintf("EXAMINE %q", f)); err != nil {
			return 0, err
		}
		n, err := run("UID FETCH 1:* BODY.PEEK[]")
		if err != nil {
			return 0, err
		}
		total += n
	}
	if total == 0 {
		return 0, fmt.Errorf("raw read as %s got no bytes", user)
	}
	run("LOGOUT")
	return total, nil
}
