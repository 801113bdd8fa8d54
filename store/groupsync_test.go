package store

import (
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestGroupSyncShares: writers arriving while a sync runs wait for it and
// then share one more sync (the running one may predate their writes);
// a failed sync's error reaches the writers that waited for it, and the
// next call syncs again.
func TestGroupSyncShares(t *testing.T) {
	var g groupSync
	release := make(chan error)
	started := make(chan struct{}, 10)
	runs := 0
	syncFn := func() error {
		runs++
		started <- struct{}{}
		return <-release
	}
	first := make(chan error, 1)
	go func() { first <- g.do(syncFn) }()
	<-started // sync 1 runs
	const writers = 5
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- g.do(syncFn)
		}()
	}
	awaitWaiting(t, &g, writers)
	release <- nil // sync 1 ends: it began before the writers came
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-started // sync 2, shared by all five
	awaitWaiting(t, &g, writers-1)
	release <- errors.New("disk gone")
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil || err.Error() != "disk gone" {
			t.Fatalf("a writer whose sync failed got %v", err)
		}
	}
	if runs != 2 {
		t.Fatalf("%d syncs for six writers in two waves, want 2", runs)
	}
	go func() { <-started; release <- nil }()
	if err := g.do(syncFn); err != nil || runs != 3 {
		t.Fatalf("after a failure the next call got %v after %d syncs, want nil after 3", err, runs)
	}
}

// awaitWaiting waits until n writers wait for the running sync.
func awaitWaiting(t *testing.T, g *groupSync, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		w := g.waiting
		g.mu.Unlock()
		if w >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writers waiting, want %d", w, n)
		}
		runtime.Gosched()
	}
}
