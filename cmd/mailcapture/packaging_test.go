package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit: the shipped unit passes systemd-analyze verify (with
// ExecStart pointed at a binary that exists here) and keeps its hardening.
func TestSystemdUnit(t *testing.T) {
	raw, err := os.ReadFile("../../packaging/mailcapture.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	for _, want := range []string{"ExecStart=/usr/local/bin/mailcapture serve --config /etc/mailcapture/mailcapture.yaml",
		"DynamicUser=yes", "StateDirectory=mailcapture", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "SystemCallFilter=@system-service", "KillSignal=SIGTERM"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("the unit lacks %q", want)
		}
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mailcapture.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/mailcapture", bin)), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestVersionCarriesBuildInfo: `mailcapture version` names the Go version
// and platform.
func TestVersionCarriesBuildInfo(t *testing.T) {
	code, out, _ := runCLI(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "mailcapture ") || !strings.Contains(out, "go1.") || !strings.Contains(out, "linux/") {
		t.Fatalf("version: exit %d %q", code, out)
	}
}
