// Package loadgauge tells how busy the local machine is: the share of
// recent time in which some task waited for a CPU or for the disk, read
// from Linux pressure stall information (/proc/pressure/cpu and
// /proc/pressure/io, "some" lines). The capture scheduler uses it to tell
// a legacy server that answers slowly from a local machine too busy to
// hear the answer in time.
package loadgauge

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// minWindow is the shortest span a new reading is taken over; readings
// asked for sooner return the last one.
const minWindow = 100 * time.Millisecond

// Gauge reads the local machine's stall share. The zero value is not
// usable; use New.
type Gauge struct {
	dir string // /proc/pressure, or a test's stand-in

	mu        sync.Mutex
	at        time.Time
	cpu, io   uint64 // cumulative stall, µs, at the last reading
	last      float64
	available bool
}

// New returns a gauge over /proc/pressure. Where the kernel offers no
// pressure information, Stall always returns 0.
func New() *Gauge { return newAt("/proc/pressure") }

func newAt(dir string) *Gauge {
	g := &Gauge{dir: dir}
	cpu, io, err := g.read()
	if err == nil {
		g.available, g.at, g.cpu, g.io = true, time.Now(), cpu, io
	}
	return g
}

// Available tells whether the kernel offers pressure information.
func (g *Gauge) Available() bool { return g.available }

// Stall returns the share of the time since the last reading (at least
// 100 ms; else the last reading's share) in which some task waited for a
// CPU or for the disk, the larger of the two: 0 on an idle machine, near
// 1 on one whose CPUs are all taken.
func (g *Gauge) Stall() float64 {
	if !g.available {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	span := now.Sub(g.at)
	if span < minWindow {
		return g.last
	}
	cpu, io, err := g.read()
	if err != nil {
		return g.last
	}
	share := func(now, before uint64) float64 {
		if now < before {
			return 0
		}
		return min(float64(now-before)/float64(span.Microseconds()), 1)
	}
	g.last = max(share(cpu, g.cpu), share(io, g.io))
	g.at, g.cpu, g.io = now, cpu, io
	return g.last
}

func (g *Gauge) read() (cpu, io uint64, err error) {
	if cpu, err = someTotal(g.dir + "/cpu"); err != nil {
		return 0, 0, err
	}
	if io, err = someTotal(g.dir + "/io"); err != nil {
		return 0, 0, err
	}
	return cpu, io, nil
}

// someTotal reads the total= field of the "some" line of a pressure file
// (microseconds during which at least one task stalled).
func someTotal(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("some ")) {
			continue
		}
		for _, field := range bytes.Fields(line) {
			if v, ok := bytes.CutPrefix(field, []byte("total=")); ok {
				return strconv.ParseUint(string(v), 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no \"some ... total=\" line", path)
}
