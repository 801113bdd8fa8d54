package store

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// Criteria selects messages (IMAP SEARCH). Every set field must match; Not
// and Or nest further criteria. Dates compare the internal date with the
// given instants (the IMAP layer turns day-granular keys into instants).
// Header, Body and Text compare case-insensitively (ASCII) against the
// stored bytes, undecoded.
type Criteria struct {
	UIDs         []UIDRange // nil: every message
	WithFlags    []string
	WithoutFlags []string
	Since        time.Time // internal date >= Since
	Before       time.Time // internal date < Before
	Larger       int64     // size > Larger
	Smaller      int64     // size < Smaller (0: unset)
	Header       []HeaderMatch
	Body         []string
	Text         []string
	Not          []Criteria
	Or           [][2]Criteria
}

// HeaderMatch matches messages with a header field Name whose value
// contains Value ("" matches any message that has the field).
type HeaderMatch struct{ Name, Value string }

// Search returns the UIDs of the mailbox's messages that match c, ascending.
func (s *Store) Search(ctx context.Context, mailboxID int64, c Criteria) ([]uint32, error) {
	ranges := c.UIDs
	if ranges == nil {
		ranges = AllUIDs
	}
	msgs, err := s.Messages(ctx, mailboxID, ranges)
	if err != nil {
		return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
	}
	var out []uint32
	for i := range msgs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := &content{store: s, msg: &msgs[i]}
		ok, err := c.match(m)
		m.release()
		if err != nil {
			return nil, fmt.Errorf("search mailbox %d: %w", mailboxID, err)
		}
		if ok {
			out = append(out, msgs[i].UID)
		}
	}
	return out, nil
}

// content loads a message's bytes lazily, once, for content keys.
type content struct {
	store  *Store
	msg    *Message
	header []byte
	body   []byte
	loaded bool
}

func (c *content) load() error {
	if c.loaded {
		return nil
	}
	f, err := c.store.OpenBody(c.msg.ID)
	if err != nil {
		return err
	}
	defer f.Close()
	raw, err := io.ReadAll(bufio.NewReader(f))
	if err != nil {
		return err
	}
	c.header, c.body = splitHeader(raw)
	c.loaded = true
	return nil
}

func (c *content) release() { c.header, c.body = nil, nil }

func splitHeader(raw []byte) (header, body []byte) {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		if j := bytes.Index(raw, []byte("\n\n")); j >= 0 && j < i {
			return raw[:j+1], raw[j+2:]
		}
		return raw[:i+2], raw[i+4:]
	}
	if j := bytes.Index(raw, []byte("\n\n")); j >= 0 {
		return raw[:j+1], raw[j+2:]
	}
	return raw, nil
}

func (c *Criteria) match(m *content) (bool, error) {
	msg := m.msg
	if c.UIDs != nil && !inRanges(msg.UID, c.UIDs) {
		return false, nil
	}
	for _, f := range c.WithFlags {
		if !hasFlag(msg.Flags, f) {
			return false, nil
		}
	}
	for _, f := range c.WithoutFlags {
		if hasFlag(msg.Flags, f) {
			return false, nil
		}
	}
	if !c.Since.IsZero() && msg.InternalDate.Before(c.Since) {
		return false, nil
	}
	if !c.Before.IsZero() && !msg.InternalDate.Before(c.Before) {
		return false, nil
	}
	if c.Larger > 0 && msg.Size <= c.Larger {
		return false, nil
	}
	if c.Smaller > 0 && msg.Size >= c.Smaller {
		return false, nil
	}
	if len(c.Header)+len(c.Body)+len(c.Text) > 0 {
		if err := m.load(); err != nil {
			return false, err
		}
		for _, h := range c.Header {
			if !headerContains(m.header, h) {
				return false, nil
			}
		}
		for _, s := range c.Body {
			if !containsFold(m.body, s) {
				return false, nil
			}
		}
		for _, s := range c.Text {
			if !containsFold(m.header, s) && !containsFold(m.body, s) {
				return false, nil
			}
		}
	}
	for i := range c.Not {
		ok, err := c.Not[i].match(m)
		if err != nil || ok {
			return false, err
		}
	}
	for i := range c.Or {
		a, err := c.Or[i][0].match(m)
		if err != nil {
			return false, err
		}
		if !a {
			b, err := c.Or[i][1].match(m)
			if err != nil || !b {
				return false, err
			}
		}
	}
	return true, nil
}

func inRanges(uid uint32, ranges []UIDRange) bool {
	for _, r := range ranges {
		if uid >= min(r.Start, r.Stop) && uid <= max(r.Start, r.Stop) {
			return true
		}
	}
	return false
}

func hasFlag(flags []string, f string) bool {
	for _, have := range flags {
		if strings.EqualFold(have, f) {
			return true
		}
	}
	return false
}

func containsFold(haystack []byte, needle string) bool {
	return bytes.Contains(bytes.ToLower(haystack), bytes.ToLower([]byte(needle)))
}

// headerContains looks through the unfolded fields called h.Name.
func headerContains(header []byte, h HeaderMatch) bool {
	name := strings.ToLower(h.Name) + ":"
	lines := strings.Split(strings.ReplaceAll(string(header), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(strings.ToLower(lines[i]), name) {
			continue
		}
		value := lines[i][len(name):]
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			value += lines[i]
		}
		if strings.Contains(strings.ToLower(value), strings.ToLower(h.Value)) {
			return true
		}
	}
	return false
}
