package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestDockerfileBuildsStaticBinary: the Dockerfile is multi-stage, runs as
// a non-root user, and its build command gives a static binary (no
// dynamic loader), which is what lets it run on a distroless base.
func TestDockerfileBuildsStaticBinary(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	if strings.Count(df, "\nFROM ") < 1 || !strings.HasPrefix(strings.TrimSpace(df[strings.Index(df, "FROM"):]), "FROM golang:") ||
		!strings.Contains(df, " AS build\n") || !strings.Contains(df, "COPY --from=build ") || !strings.Contains(df, "\nUSER nonroot:nonroot\n") {
		t.Fatalf("the Dockerfile is not a multi-stage, non-root build:\n%s", df)
	}
	m := regexp.MustCompile(`RUN (CGO_ENABLED=0 go build [^\n]*) -o /out/mailcapture ./cmd/mailcapture`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("no static go build line in the Dockerfile")
	}
	out := filepath.Join(t.TempDir(), "mailcapture")
	// The RUN line as the image's shell runs it.
	cmd := exec.Command("sh", "-c", m[1]+" -o "+out+" ./cmd/mailcapture")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "VERSION=test")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary needs a dynamic loader: not static")
		}
	}
}
