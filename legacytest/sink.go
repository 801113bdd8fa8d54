package legacytest

import (
	"io"
	"log"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// SinkMessage is one message a Sink took.
type SinkMessage struct {
	From string
	To   []string
	Data []byte
}

// Sink is an SMTP server on loopback that takes every message and keeps
// it: it stands in for the outside world where mail for other domains
// goes.
type Sink struct {
	Addr string

	mu       sync.Mutex
	messages []SinkMessage
	arrived  chan struct{} // closed and replaced at each message
	srv      *smtp.Server
}

// StartSink starts a Sink; it is stopped when the test ends.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Sink{Addr: ln.Addr().String(), arrived: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }))
	s.srv.Domain = "sink.example.net"
	s.srv.AllowInsecureAuth = true
	s.srv.ErrorLog = log.New(io.Discard, "", 0) // clients cut off by a kill are expected
	s.srv.ReadTimeout, s.srv.WriteTimeout = time.Minute, time.Minute
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// Messages returns what the sink took so far, in arrival order.
func (s *Sink) Messages() []SinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SinkMessage(nil), s.messages...)
}

// Wait waits (30 s at most) until the sink holds n messages, and returns
// them; it fails the test if they do not come.
func (s *Sink) Wait(t testing.TB, n int) []SinkMessage {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		got, arrived := len(s.messages), s.arrived
		s.mu.Unlock()
		if got >= n {
			return s.Messages()
		}
		select {
		case <-arrived:
		case <-timeout:
			t.Fatalf("legacytest: the sink holds %d messages after 30 s, want %d", got, n)
		}
	}
}

func (s *Sink) add(m SinkMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	close(s.arrived)
	s.arrived = make(chan struct{})
}

type sinkSession struct {
	sink *Sink
	msg  SinkMessage
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.msg = SinkMessage{From: from}
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = data
	s.sink.add(s.msg)
	return nil
}

func (s *sinkSession) Reset()        { s.msg = SinkMessage{} }
func (s *sinkSession) Logout() error { return nil }
