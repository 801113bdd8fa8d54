package front

import (
	"io"
	"sync"
)

// batchSize is the most a batchWriter gathers before it writes.
const batchSize = 32 << 10

var batchBuffers = sync.Pool{New: func() any {
	b := make([]byte, 0, batchSize)
	return &b
}}

// batchWriter gathers small writes (a FETCH answer is many) so that they
// reach the socket in few system calls. Its buffer comes from a pool and
// goes back at each Flush: an idle connection holds none. Not safe for
// concurrent use.
type batchWriter struct {
	w   io.Writer
	buf *[]byte
}

func (b *batchWriter) Write(p []byte) (int, error) {
	if b.buf != nil && len(*b.buf)+len(p) > batchSize {
		if err := b.Flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= batchSize {
		return b.w.Write(p)
	}
	if b.buf == nil {
		b.buf = batchBuffers.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// Flush writes what was gathered.
func (b *batchWriter) Flush() error {
	if b.buf == nil {
		return nil
	}
	buf := b.buf
	b.buf = nil
	_, err := b.w.Write(*buf)
	*buf = (*buf)[:0]
	batchBuffers.Put(buf)
	return err
}
