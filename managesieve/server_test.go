package managesieve

import (
	"bufio"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

type fakeBackend struct{}

func (fakeBackend) Login(_ context.Context, user, pass string, _ net.Addr, _ *slog.Logger) (Session, error) {
	if user != "u" || pass != "p" {
		return nil, ErrAuthFailed
	}
	return &fakeSession{}, nil
}

type fakeSession struct{ scripts map[string]string }

func (s *fakeSession) ListScripts(context.Context) ([]Script, error) { return nil, nil }
func (s *fakeSession) GetScript(_ context.Context, name string) ([]byte, error) {
	return nil, &Error{Code: "NONEXISTENT", Text: "no " + name}
}
func (s *fakeSession) PutScript(context.Context, string, []byte) error    { return nil }
func (s *fakeSession) CheckScript(context.Context, []byte) error          { return nil }
func (s *fakeSession) SetActive(context.Context, string) error            { return nil }
func (s *fakeSession) DeleteScript(context.Context, string) error         { return nil }
func (s *fakeSession) RenameScript(context.Context, string, string) error { return nil }
func (s *fakeSession) HaveSpace(context.Context, string, int) error       { return nil }
func (s *fakeSession) Ended() <-chan struct{}                             { return nil }
func (s *fakeSession) Close() error                                       { return nil }

// TestProtocolErrors: what a client gets for bad input: NO for an
// unknown command, a command before AUTHENTICATE, a line too long, a
// bad literal; NO (ENCRYPT-NEEDED) for AUTHENTICATE without TLS from an
// untrusted client; BYE for a literal over the size limit; SASL LOGIN
// without an initial response works from a trusted one.
func TestProtocolErrors(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		srv := &Server{Backend: fakeBackend{}, Trusted: func(net.Addr) bool { return trusted }, MaxScriptBytes: 100, Extensions: "fileinto"}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		r := bufio.NewReader(c)
		// answer reads up to OK, NO or BYE and returns that line.
		answer := func() string {
			t.Helper()
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				for _, w := range []string{"OK", "NO", "BYE"} {
					if strings.HasPrefix(l, w) {
						return strings.TrimSpace(l)
					}
				}
			}
		}
		send := func(line string) string {
			t.Helper()
			io.WriteString(c, line+"\r\n")
			return answer()
		}
		answer()
		for cmd, want := range map[string]string{
			"FROBNICATE":              "NO",
			"LISTSCRIPTS":             `NO "authenticate first"`,
			strings.Repeat("x", 9000): `NO "command line too long"`,
			"PUTSCRIPT \"a\" {zz}":    `NO "bad literal"`,
		} {
			if got := send(cmd); !strings.HasPrefix(got, want) {
				t.Errorf("trusted=%v %.20s: %q, want %q", trusted, cmd, got, want)
			}
		}
		if !trusted {
			if got := send(`AUTHENTICATE "PLAIN" "` + base64.StdEncoding.EncodeToString([]byte("\x00u\x00p")) + `"`); !strings.HasPrefix(got, "NO (ENCRYPT-NEEDED)") {
				t.Errorf("AUTHENTICATE without TLS: %q", got)
			}
		} else {
			io.WriteString(c, "AUTHENTICATE \"LOGIN\"\r\n")
			for _, v := range []string{"u", "p"} {
				if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, `"`) {
					t.Fatalf("LOGIN challenge: %q", l)
				}
				io.WriteString(c, `"`+base64.StdEncoding.EncodeToString([]byte(v))+"\"\r\n")
			}
			if got := answer(); !strings.HasPrefix(got, "OK") {
				t.Fatalf("AUTHENTICATE LOGIN: %q", got)
			}
			if got := send(`GETSCRIPT "x"`); got != `NO (NONEXISTENT) "no x"` {
				t.Errorf("GETSCRIPT: %q", got)
			}
			if got := send("PUTSCRIPT \"a\" {200+}\r\n" + strings.Repeat("k", 200)); !strings.HasPrefix(got, "NO (QUOTA/MAXSIZE)") {
				t.Errorf("a script over the limit: %q", got)
			}
			if got := send("NOOP"); !strings.HasPrefix(got, "OK") {
				t.Errorf("NOOP after a script over the limit: %q", got)
			}
			if got := send("PUTSCRIPT \"a\" {1000+}"); !strings.HasPrefix(got, "BYE (QUOTA/MAXSIZE)") {
				t.Errorf("a literal far over the limit: %q", got)
			}
		}
		c.Close()
		srv.Shutdown(context.Background())
	}
}
