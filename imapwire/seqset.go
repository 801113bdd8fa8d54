package imapwire

import (
	"strconv"
	"strings"
	"time"
)

// Range is an inclusive range of sequence numbers or UIDs; 0 stands for
// "*", the largest number in use.
type Range struct{ Start, Stop uint32 }

// NumSet is a sequence set (RFC 3501 sequence-set) as written: ranges in
// the client's order, "*" unresolved.
type NumSet []Range

// SeqSet reads a sequence set.
func (r *Reader) SeqSet() (NumSet, error) {
	var set NumSet
	for {
		a, err := r.seqNumber()
		if err != nil {
			return nil, err
		}
		rg := Range{a, a}
		if r.Maybe(':') {
			b, err := r.seqNumber()
			if err != nil {
				return nil, err
			}
			rg.Stop = b
		}
		set = append(set, rg)
		if !r.Maybe(',') {
			return set, nil
		}
	}
}

func (r *Reader) seqNumber() (uint32, error) {
	if r.Maybe('*') {
		return 0, nil
	}
	if c := r.Peek(); c < '1' || c > '9' {
		return 0, syntaxf("bad sequence set")
	}
	n, err := r.Number()
	if err != nil || n == 0 {
		return 0, syntaxf("bad sequence set")
	}
	return n, nil
}

// Resolve returns the set with "*" replaced by last and each range
// ordered low to high.
func (s NumSet) Resolve(last uint32) NumSet {
	out := make(NumSet, len(s))
	for i, rg := range s {
		if rg.Start == 0 {
			rg.Start = last
		}
		if rg.Stop == 0 {
			rg.Stop = last
		}
		if rg.Start > rg.Stop {
			rg.Start, rg.Stop = rg.Stop, rg.Start
		}
		out[i] = rg
	}
	return out
}

// Contains tells whether a resolved set holds n.
func (s NumSet) Contains(n uint32) bool {
	for _, rg := range s {
		if n >= rg.Start && n <= rg.Stop {
			return true
		}
	}
	return false
}

// AppendSet writes ascending numbers as a compact sequence set
// ("1:3,7"); nums must be sorted.
func AppendSet(buf []byte, nums []uint32) []byte {
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && nums[j+1] == nums[j]+1 {
			j++
		}
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = strconv.AppendUint(buf, uint64(nums[i]), 10)
		if j > i {
			buf = append(buf, ':')
			buf = strconv.AppendUint(buf, uint64(nums[j]), 10)
		}
		i = j + 1
	}
	return buf
}

var months = []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}

// Date reads an RFC 3501 date (d-MMM-yyyy, quoted or not), as midnight
// UTC of that day.
func (r *Reader) Date() (time.Time, error) {
	quoted := r.Maybe('"')
	s, err := r.Chars(func(c byte) bool {
		return c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	})
	if err != nil {
		return time.Time{}, syntaxf("bad date")
	}
	if quoted && !r.Maybe('"') {
		return time.Time{}, syntaxf("bad date")
	}
	parts := strings.Split(s, "-")
	if len(parts) != 3 || len(parts[0]) < 1 || len(parts[0]) > 2 || len(parts[2]) != 4 {
		return time.Time{}, syntaxf("bad date %q", s)
	}
	day, err1 := strconv.Atoi(parts[0])
	year, err2 := strconv.Atoi(parts[2])
	month := monthIndex(parts[1])
	if err1 != nil || err2 != nil || month == 0 || day < 1 || day > 31 {
		return time.Time{}, syntaxf("bad date %q", s)
	}
	return time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC), nil
}

func monthIndex(s string) int {
	for i, m := range months {
		if strings.EqualFold(s, m) {
			return i + 1
		}
	}
	return 0
}

// DateTime reads an RFC 3501 date-time: "dd-MMM-yyyy hh:mm:ss +zzzz".
func (r *Reader) DateTime() (time.Time, error) {
	s, err := r.Quoted()
	if err != nil {
		return time.Time{}, syntaxf("bad date-time")
	}
	t, err := time.Parse("_2-Jan-2006 15:04:05 -0700", s)
	if err != nil {
		if t, err = time.Parse("02-Jan-2006 15:04:05 -0700", s); err != nil {
			return time.Time{}, syntaxf("bad date-time %q", s)
		}
	}
	return t, nil
}

// DateTimeLayout is how a date-time is written (INTERNALDATE).
const DateTimeLayout = "02-Jan-2006 15:04:05 -0700"
