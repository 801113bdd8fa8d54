// Package scratchfs gives benchmarks (and disk-full tests) a fresh,
// journaled ext4 filesystem on a loop device, so that what they measure is the code, not the history
// of the machine's own filesystem (a root ext4 without a journal makes
// file creation crawl for minutes after a mass deletion).
package scratchfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Mount creates a sizeMB ext4 image, mounts it and returns the mount
// point; it is unmounted and removed when tb ends. Without root, or where
// loop devices do not work, it returns a temporary directory instead and
// says so in the output.
func Mount(tb testing.TB, sizeMB int) string {
	tb.Helper()
	mnt, _ := mount(tb, sizeMB)
	return mnt
}

// MustMount is Mount for tests that need a filesystem of exactly that size
// (to fill it): it fails the test when no loop mount can be made.
func MustMount(tb testing.TB, sizeMB int) string {
	tb.Helper()
	mnt, ok := mount(tb, sizeMB)
	if !ok {
		tb.Fatalf("scratchfs: a %d MB loop filesystem is needed (root and loop devices)", sizeMB)
	}
	return mnt
}

func mount(tb testing.TB, sizeMB int) (string, bool) {
	tb.Helper()
	dir := tb.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	if os.Geteuid() != 0 {
		fmt.Printf("scratchfs: not root, benchmarking on %s as it is\n", dir)
		return mnt, false
	}
	steps := [][]string{
		{"truncate", "-s", fmt.Sprintf("%dM", sizeMB), img},
		{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img},
		{"mount", "-o", "loop", img, mnt},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			fmt.Printf("scratchfs: %s failed (%v: %s), benchmarking on %s as it is\n", s[0], err, out, dir)
			return mnt, false
		}
	}
	// Servers that drop privileges (Dovecot) may work there too.
	os.Chmod(mnt, 0o755)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			tb.Errorf("scratchfs: umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt, true
}

// Fill writes the file path until the filesystem holding dir has about
// free bytes left (disk-full tests); remove path to give the space back.
func Fill(tb testing.TB, dir, path string, free int64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for i := 0; i < 1<<20; i++ {
		var s syscall.Statfs_t
		if err := syscall.Statfs(dir, &s); err != nil {
			tb.Fatal(err)
		}
		// Root may also write into the blocks reserved for it.
		avail := int64(s.Bavail) * int64(s.Bsize)
		if os.Geteuid() == 0 {
			avail = int64(s.Bfree) * int64(s.Bsize)
		}
		if avail <= free {
			break
		}
		n := min(int64(len(chunk)), avail-free)
		_, err := f.Write(chunk[:n])
		if err == nil {
			err = f.Sync() // the blocks are counted once allocated
		}
		if err != nil {
			// The last blocks go in smaller writes: a failed large write
			// would leave room behind.
			if len(chunk) == 1 {
				break
			}
			chunk = chunk[:len(chunk)/2]
		}
	}
}

// Timed times fn after writing back what earlier work left dirty (sync),
// so that a timed part of a benchmark never pays for another's disk
// writes; fn's error fails tb.
func Timed(tb testing.TB, fn func() error) time.Duration {
	tb.Helper()
	syscall.Sync()
	start := time.Now()
	if err := fn(); err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}
