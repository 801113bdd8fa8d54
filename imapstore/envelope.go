package imapstore

import (
	"sort"
	"strconv"
	"strings"

	"mailcapture/imapwire"
	"mailcapture/mimeinfo"
)

// appendEnvelope writes an ENVELOPE (RFC 3501 7.4.2): header values as
// they stand in the message, addresses with group markers.
func appendEnvelope(buf []byte, e *mimeinfo.Envelope) []byte {
	buf = append(buf, '(')
	buf = imapwire.AppendNString(buf, e.Date)
	buf = append(buf, ' ')
	buf = imapwire.AppendNString(buf, e.Subject)
	for _, list := range [][]mimeinfo.Address{e.From, e.Sender, e.ReplyTo, e.To, e.Cc, e.Bcc} {
		buf = append(buf, ' ')
		buf = appendAddresses(buf, list)
	}
	buf = append(buf, ' ')
	buf = imapwire.AppendNString(buf, e.InReplyTo)
	buf = append(buf, ' ')
	buf = imapwire.AppendNString(buf, e.MessageID)
	return append(buf, ')')
}

func appendAddresses(buf []byte, list []mimeinfo.Address) []byte {
	if len(list) == 0 {
		return append(buf, "NIL"...)
	}
	buf = append(buf, '(')
	for _, a := range list {
		buf = append(buf, '(')
		buf = imapwire.AppendNString(buf, a.Name)
		buf = append(buf, ' ')
		buf = imapwire.AppendNString(buf, a.Route)
		buf = append(buf, ' ')
		switch {
		case a.Group:
			// Group start: (NIL NIL "name" NIL); end: (NIL NIL NIL NIL).
			buf = imapwire.AppendNString(buf, a.Mailbox)
			buf = append(buf, " NIL"...)
		default:
			buf = imapwire.AppendNString(buf, a.Mailbox)
			buf = append(buf, ' ')
			buf = imapwire.AppendNString(buf, a.Host)
		}
		buf = append(buf, ')')
	}
	return append(buf, ')')
}

// appendBodyStructure writes BODY (extended false) or BODYSTRUCTURE
// (RFC 3501 7.4.2).
func appendBodyStructure(buf []byte, p *mimeinfo.Part, extended bool) []byte {
	buf = append(buf, '(')
	if len(p.Parts) > 0 {
		for i := range p.Parts {
			buf = appendBodyStructure(buf, &p.Parts[i], extended)
		}
		buf = append(buf, ' ')
		buf = imapwire.AppendQuotedOrLiteral(buf, p.Subtype)
		if extended {
			buf = append(buf, ' ')
			buf = appendParams(buf, p.Params)
			buf = appendExtension(buf, p)
		}
		return append(buf, ')')
	}
	buf = imapwire.AppendQuotedOrLiteral(buf, p.Type)
	buf = append(buf, ' ')
	buf = imapwire.AppendQuotedOrLiteral(buf, p.Subtype)
	buf = append(buf, ' ')
	buf = appendParams(buf, p.Params)
	buf = append(buf, ' ')
	buf = imapwire.AppendNString(buf, p.ID)
	buf = append(buf, ' ')
	buf = imapwire.AppendNString(buf, p.Description)
	buf = append(buf, ' ')
	buf = imapwire.AppendQuotedOrLiteral(buf, p.Encoding)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, p.Size(), 10)
	switch {
	case p.Message != nil:
		buf = append(buf, ' ')
		buf = appendEnvelope(buf, &p.Message.Envelope)
		buf = append(buf, ' ')
		buf = appendBodyStructure(buf, &p.Message.Root, extended)
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, p.Lines, 10)
	case strings.EqualFold(p.Type, "text"):
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, p.Lines, 10)
	}
	if extended {
		buf = append(buf, ' ')
		buf = imapwire.AppendNString(buf, p.MD5)
		buf = appendExtension(buf, p)
	}
	return append(buf, ')')
}

// appendExtension writes the disposition, language and location.
func appendExtension(buf []byte, p *mimeinfo.Part) []byte {
	buf = append(buf, ' ')
	if p.Disposition == "" {
		buf = append(buf, "NIL"...)
	} else {
		buf = append(buf, '(')
		buf = imapwire.AppendQuotedOrLiteral(buf, p.Disposition)
		buf = append(buf, ' ')
		buf = appendParams(buf, p.DispositionParams)
		buf = append(buf, ')')
	}
	buf = append(buf, ' ')
	switch len(p.Language) {
	case 0:
		buf = append(buf, "NIL"...)
	case 1:
		buf = imapwire.AppendQuotedOrLiteral(buf, p.Language[0])
	default:
		buf = append(buf, '(')
		for i, l := range p.Language {
			if i > 0 {
				buf = append(buf, ' ')
			}
			buf = imapwire.AppendQuotedOrLiteral(buf, l)
		}
		buf = append(buf, ')')
	}
	buf = append(buf, ' ')
	return imapwire.AppendNString(buf, p.Location)
}

func appendParams(buf []byte, params map[string]string) []byte {
	if len(params) == 0 {
		return append(buf, "NIL"...)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	buf = append(buf, '(')
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = imapwire.AppendQuotedOrLiteral(buf, k)
		buf = append(buf, ' ')
		buf = imapwire.AppendQuotedOrLiteral(buf, params[k])
	}
	return append(buf, ')')
}
