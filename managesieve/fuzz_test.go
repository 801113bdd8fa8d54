package managesieve

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// panicCounter counts the log lines a recovered panic writes.
type panicCounter struct{ n *atomic.Int64 }

func (h panicCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h panicCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panicked") {
		h.n.Add(1)
	}
	return nil
}
func (h panicCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h panicCounter) WithGroup(string) slog.Handler      { return h }

// FuzzSession: any bytes from a client end in answers and a closed
// session, never a panic or a hang.
func FuzzSession(f *testing.F) {
	for _, seed := range []string{
		"AUTHENTICATE \"PLAIN\" \"AHUAcA==\"\r\nLISTSCRIPTS\r\nPUTSCRIPT \"a\" {5+}\r\nkeep;\r\nSETACTIVE \"a\"\r\nGETSCRIPT \"a\"\r\nLOGOUT\r\n",
		"AUTHENTICATE \"LOGIN\"\r\n\"dQ==\"\r\n\"cA==\"\r\nHAVESPACE \"a\" 10\r\nRENAMESCRIPT \"a\" \"b\"\r\nDELETESCRIPT \"b\"\r\n",
		"CAPABILITY\r\nNOOP\r\nSTARTTLS\r\nPUTSCRIPT {9999999}\r\n",
		"AUTHENTICATE \"PLAIN\"\r\n*\r\n\"unterminated\r\n{abc}\r\n" + strings.Repeat("x", 9000) + "\r\nLOGOUT\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var panics atomic.Int64
		srv := &Server{Backend: fakeBackend{}, Trusted: func(net.Addr) bool { return true }, MaxScriptBytes: 100,
			IdleTimeout: 2 * time.Second, Log: slog.New(panicCounter{&panics})}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.serve(server)
			close(done)
		}()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(raw)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not end")
		}
		if panics.Load() > 0 {
			t.Fatal("the session panicked")
		}
	})
}
