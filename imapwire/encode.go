package imapwire

import "strconv"

// AppendQuotedOrLiteral writes s as a quoted string, or as a literal when
// it holds bytes a quoted string cannot (CR, LF, NUL, 8-bit) or is long.
func AppendQuotedOrLiteral(buf []byte, s string) []byte {
	if !quotable(s) {
		return AppendLiteral(buf, s)
	}
	buf = append(buf, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			buf = append(buf, '\\')
		}
		buf = append(buf, s[i])
	}
	return append(buf, '"')
}

// AppendLiteral writes s as a literal.
func AppendLiteral(buf []byte, s string) []byte {
	buf = AppendLiteralHeader(buf, int64(len(s)))
	return append(buf, s...)
}

// AppendLiteralHeader writes "{n}" and its line end.
func AppendLiteralHeader(buf []byte, n int64) []byte {
	buf = append(buf, '{')
	buf = strconv.AppendInt(buf, n, 10)
	return append(buf, "}\r\n"...)
}

func quotable(s string) bool {
	if len(s) > 1024 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\r' || c == '\n' || c == 0 || c >= 0x80 {
			return false
		}
	}
	return true
}

// AppendNString writes s, or NIL when s is empty.
func AppendNString(buf []byte, s string) []byte {
	if s == "" {
		return append(buf, "NIL"...)
	}
	return AppendQuotedOrLiteral(buf, s)
}

// AppendAstring writes s as an atom when it is one (and not NIL), else
// as a string.
func AppendAstring(buf []byte, s string) []byte {
	if s != "" && !isNil(s) {
		atom := true
		for i := 0; i < len(s); i++ {
			if !IsAstringChar(s[i]) {
				atom = false
				break
			}
		}
		if atom {
			return append(buf, s...)
		}
	}
	return AppendQuotedOrLiteral(buf, s)
}

func isNil(s string) bool {
	return len(s) == 3 && (s[0]|0x20) == 'n' && (s[1]|0x20) == 'i' && (s[2]|0x20) == 'l'
}

// AppendMailbox writes a mailbox name (stored in UTF-8) as the client
// reads it: modified UTF-7, quoted (as Dovecot writes names).
func AppendMailbox(buf []byte, name string) []byte {
	return AppendQuotedOrLiteral(buf, EncodeUTF7(name))
}
