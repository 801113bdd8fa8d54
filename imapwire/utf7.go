package imapwire

import (
	"errors"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrBadUTF7 is a mailbox name that is not valid modified UTF-7.
var ErrBadUTF7 = errors.New("mailbox name is not valid modified UTF-7")

// modified base64 of RFC 3501 5.1.3: "," in place of "/", no padding.
const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"

var b64Index = func() [256]int8 {
	var t [256]int8
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(b64); i++ {
		t[b64[i]] = int8(i)
	}
	return t
}()

// EncodeUTF7 writes a UTF-8 mailbox name in modified UTF-7 (RFC 3501
// 5.1.3): printable ASCII as itself ("&" as "&-"), everything else as
// base64 of UTF-16 between "&" and "-".
func EncodeUTF7(name string) string {
	if isPlainName(name) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		c := name[i]
		if c >= 0x20 && c <= 0x7e {
			if c == '&' {
				b.WriteString("&-")
			} else {
				b.WriteByte(c)
			}
			i++
			continue
		}
		// A run of characters that need encoding.
		j := i
		var units []uint16
		for j < len(name) && (name[j] < 0x20 || name[j] > 0x7e) {
			r, size := utf8.DecodeRuneInString(name[j:])
			j += size
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				units = append(units, uint16(r1), uint16(r2))
			} else {
				units = append(units, uint16(r))
			}
		}
		b.WriteByte('&')
		var bits uint32
		n := 0
		for _, u := range units {
			bits = bits<<16 | uint32(u)
			n += 16
			for n >= 6 {
				n -= 6
				b.WriteByte(b64[(bits>>n)&0x3f])
			}
		}
		if n > 0 {
			b.WriteByte(b64[(bits<<(6-n))&0x3f])
		}
		b.WriteByte('-')
		i = j
	}
	return b.String()
}

// isPlainName tells whether a name is printable ASCII without "&".
func isPlainName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e || s[i] == '&' {
			return false
		}
	}
	return true
}

// DecodeUTF7 reads a modified UTF-7 mailbox name into UTF-8. It refuses
// what RFC 3501 5.1.3 does not allow: 8-bit or control bytes, an
// unterminated or empty shift, base64 that does not end on a character,
// non-zero padding bits, broken surrogate pairs, and printable ASCII
// written in base64.
func DecodeUTF7(s string) (string, error) {
	if isPlainName(s) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			return "", ErrBadUTF7
		}
		if c != '&' {
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+1:], '-')
		if end < 0 {
			return "", ErrBadUTF7
		}
		enc := s[i+1 : i+1+end]
		i += end + 1
		if enc == "" {
			b.WriteByte('&')
			continue
		}
		if err := decodeShift(&b, enc); err != nil {
			return "", err
		}
		// "&...-&...-": two shifts in a row should have been one.
		if i+1 < len(s) && s[i+1] == '&' && !strings.HasPrefix(s[i+1:], "&-") {
			return "", ErrBadUTF7
		}
	}
	return b.String(), nil
}

func decodeShift(b *strings.Builder, enc string) error {
	var bits uint32
	n := 0
	var units []uint16
	for i := 0; i < len(enc); i++ {
		v := b64Index[enc[i]]
		if v < 0 {
			return ErrBadUTF7
		}
		bits = bits<<6 | uint32(v)
		n += 6
		if n >= 16 {
			n -= 16
			units = append(units, uint16(bits>>n))
			bits &= 1<<n - 1
		}
	}
	if n >= 6 || bits != 0 || len(units) == 0 {
		return ErrBadUTF7
	}
	for i := 0; i < len(units); i++ {
		u := rune(units[i])
		switch {
		case utf16.IsSurrogate(u):
			if u >= 0xdc00 || i+1 >= len(units) {
				return ErrBadUTF7
			}
			r := utf16.DecodeRune(u, rune(units[i+1]))
			if r == utf8.RuneError {
				return ErrBadUTF7
			}
			b.WriteRune(r)
			i++
		case u >= 0x20 && u <= 0x7e:
			return ErrBadUTF7 // must have been written as itself
		default:
			b.WriteRune(u)
		}
	}
	return nil
}
