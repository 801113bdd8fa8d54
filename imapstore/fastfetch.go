package imapstore

import (
	"strconv"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailcapture/store"
)

// internalDateLayout is how IMAP writes INTERNALDATE (RFC 3501
// date-time), as go-imap does.
const internalDateLayout = "_2-Jan-2006 15:04:05 -0700"

// fastFetchFlush is how much encoded output the fast path gathers before
// it writes.
const fastFetchFlush = 32 << 10

// metadataOnly tells whether a FETCH asks for nothing but UID, FLAGS,
// INTERNALDATE and RFC822.SIZE: what clients ask of a whole mailbox to
// resynchronise.
func metadataOnly(o *imap.FetchOptions) bool {
	return o.BodyStructure == nil && !o.Envelope && len(o.BodySection) == 0 && len(o.BinarySection) == 0 &&
		len(o.BinarySectionSize) == 0 && !o.ModSeq && o.ChangedSince == 0
}

// fetchMetadata answers a metadata-only FETCH by encoding its lines
// itself and writing them to the session's connection in large writes.
// Through imapserver's FetchWriter each line costs a lock, two write
// deadlines and half a dozen allocations, which on a mailbox of tens of
// thousands of messages is most of the time a FETCH 1:* (FLAGS) takes.
//
// The bytes are those FetchResponseWriter would write, item for item, in
// fetchOne's order (TestFastFetchMatchesImapserver compares them). It is
// safe because imapserver flushes its buffer at the end of every
// response and runs a session's commands one at a time: between two of
// its responses, the connection is the session's. A message whose flags
// cannot be written as atoms goes through FetchWriter, which refuses them
// as it always does.
func (s *Session) fetchMetadata(w *imapserver.FetchWriter, targets []target, options *imap.FetchOptions) error {
	buf := make([]byte, 0, fastFetchFlush+512)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		_, err := s.raw.Write(buf)
		buf = buf[:0]
		return err
	}
	err := s.eachMessage(targets, func(t target, m store.Message) error {
		if options.Flags && !atomFlags(m.Flags) {
			if err := flush(); err != nil {
				return err
			}
			return s.fetchOne(w.CreateMessage(t.seq), m, options, false)
		}
		buf = appendFetchLine(buf, t.seq, m, options)
		if len(buf) >= fastFetchFlush {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// appendFetchLine appends one FETCH response of metadata.
func appendFetchLine(buf []byte, seq uint32, m store.Message, o *imap.FetchOptions) []byte {
	buf = append(buf, "* "...)
	buf = strconv.AppendUint(buf, uint64(seq), 10)
	buf = append(buf, " FETCH ("...)
	sep := false
	item := func(name string) {
		if sep {
			buf = append(buf, ' ')
		}
		sep = true
		buf = append(buf, name...)
	}
	if o.UID {
		item("UID ")
		buf = strconv.AppendUint(buf, uint64(m.UID), 10)
	}
	if o.Flags {
		item("FLAGS (")
		for i, f := range m.Flags {
			if i > 0 {
				buf = append(buf, ' ')
			}
			buf = append(buf, f...)
		}
		buf = append(buf, ')')
	}
	if o.InternalDate {
		item(`INTERNALDATE "`)
		buf = m.InternalDate.AppendFormat(buf, internalDateLayout)
		buf = append(buf, '"')
	}
	if o.RFC822Size {
		item("RFC822.SIZE ")
		buf = strconv.AppendInt(buf, m.Size, 10)
	}
	return append(buf, ")\r\n"...)
}

// atomFlags tells whether every flag is written as is (imapwire's rule:
// atom characters, with a backslash only first).
func atomFlags(flags []string) bool {
	for _, f := range flags {
		if f == "" {
			return false
		}
		for i := 0; i < len(f); i++ {
			ch := f[i]
			if ch == '\\' {
				if i != 0 {
					return false
				}
			} else if !atomChar(ch) {
				return false
			}
		}
	}
	return true
}

// atomChar is RFC 3501 ATOM-CHAR: no controls, space, "(){%*\"\\]" or 8-bit.
func atomChar(ch byte) bool {
	switch ch {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return ch > 0x1f && ch < 0x7f
}
