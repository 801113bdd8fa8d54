package loadgauge

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writePressure(t *testing.T, dir string, cpu, io uint64) {
	t.Helper()
	for name, total := range map[string]uint64{"cpu": cpu, "io": io} {
		body := fmt.Sprintf("some avg10=0.00 avg60=0.00 avg300=0.00 total=%d\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", total)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStallShare: the share is the stall time grown since the last
// reading over the time passed, the larger of CPU and disk, and a reading
// asked for within 100 ms returns the last one.
func TestStallShare(t *testing.T) {
	dir := t.TempDir()
	writePressure(t, dir, 1000, 5000)
	g := newAt(dir)
	if !g.Available() {
		t.Fatal("pressure files not read")
	}
	g.at = time.Now().Add(-time.Second)
	writePressure(t, dir, 1000+900_000, 5000+100_000) // 0.9 s CPU stall in ~1 s
	if s := g.Stall(); s < 0.85 || s > 0.9 {
		t.Fatalf("stall %.3f after 0.9 s of CPU stall in a second, want about 0.9", s)
	}
	writePressure(t, dir, 1000+900_000, 5000+100_000+10_000_000)
	if s := g.Stall(); s < 0.85 || s > 0.9 {
		t.Fatalf("a reading within 100 ms gave %.3f, want the last one", s)
	}
	g.at = time.Now().Add(-time.Second)
	if s := g.Stall(); s != 1 {
		t.Fatalf("disk stall beyond the span gave %.3f, want 1 (capped)", s)
	}
}

// TestWithoutPressure: where the kernel has no pressure files, the gauge
// says 0 and that it is not available.
func TestWithoutPressure(t *testing.T) {
	g := newAt(filepath.Join(t.TempDir(), "none"))
	if g.Available() || g.Stall() != 0 {
		t.Fatalf("available %v, stall %v", g.Available(), g.Stall())
	}
}

// TestRealPressure reads this machine's pressure files: the integration
// tests of the capture scheduler depend on them.
func TestRealPressure(t *testing.T) {
	g := New()
	if !g.Available() {
		t.Fatal("/proc/pressure is not readable: the kernel needs CONFIG_PSI (psi=1)")
	}
	g.at = time.Now().Add(-time.Second)
	if s := g.Stall(); s < 0 || s > 1 {
		t.Fatalf("stall %v out of [0, 1]", s)
	}
}
