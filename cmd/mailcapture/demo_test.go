package main

import (
	"strings"
	"testing"
)

// TestDemoWalkthrough runs `mailcapture demo --walkthrough`: relay to the
// sample legacy server, a proxied login, the capture and cut-over, the
// local copy compared with the legacy one, local delivery.
func TestDemoWalkthrough(t *testing.T) {
	code, out, errOut := runCLI(t, nil, "demo", "--walkthrough", "--messages", "400")
	if code != 0 {
		t.Fatalf("demo --walkthrough: exit %d\n%s\n%s", code, out, errOut)
	}
	if n := strings.Count(out, "\n   ok: "); n != 5 || !strings.Contains(out, "walkthrough done") ||
		!strings.Contains(out, "INBOX identical (UIDVALIDITY, UIDs, flags, bytes)") {
		t.Fatalf("walkthrough output (%d steps ok):\n%s", n, out)
	}
}

func TestDemoRefusesBadFlags(t *testing.T) {
	for args, want := range map[string]string{
		"--messages 0":       "--messages",
		"--log-level loud":   `"loud" is not one of`,
		"--walkthrough=mayb": "invalid argument",
	} {
		code, _, errOut := runCLI(t, nil, append([]string{"demo"}, strings.Fields(args)...)...)
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("demo %s: exit %d %q, want %q", args, code, errOut, want)
		}
	}
}
