package store

import "sync"

// groupSync shares filesystem syncs among the writers waiting for one:
// a writer needs a sync that began after its bodies were written, so
// while one sync runs, the writers arriving meanwhile wait for it to end
// and then share the next one. With many captures committing at once,
// one syncfs makes several batches durable.
type groupSync struct {
	mu       sync.Mutex
	cond     *sync.Cond
	running  bool
	begun    uint64 // syncs begun
	finished uint64 // the last sync finished
	failed   uint64 // the last sync that failed, and its error
	err      error
	waiting  int // writers waiting for a sync to end
}

// do returns once a run of syncFn that began after the call has ended:
// nil if it succeeded, else its error (or a later failure's).
func (g *groupSync) do(syncFn func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	// A sync running now may have begun before this writer's bodies were
	// written: only the next one is sure to cover them.
	want := g.begun + 1
	for g.finished < want {
		if g.running {
			g.waiting++
			g.cond.Wait()
			g.waiting--
			continue
		}
		g.running = true
		g.begun++
		n := g.begun
		g.mu.Unlock()
		err := syncFn()
		g.mu.Lock()
		g.running = false
		g.finished = n
		if err != nil {
			g.failed, g.err = n, err
		}
		g.cond.Broadcast()
	}
	if g.failed >= want {
		return g.err
	}
	return nil
}
