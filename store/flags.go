package store

import (
	"sort"
	"strings"
)

// systemFlags maps the lower-case form of each RFC 3501 system flag that
// is stored to its canonical spelling. \Recent is per session, never stored.
var systemFlags = map[string]string{
	`\seen`: `\Seen`, `\answered`: `\Answered`, `\flagged`: `\Flagged`,
	`\deleted`: `\Deleted`, `\draft`: `\Draft`,
}

// normalizeFlags canonicalises system flags, drops \Recent, empty and
// duplicate (case-insensitive) flags, and sorts the rest.
func normalizeFlags(flags []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		f = strings.TrimSpace(f)
		lower := strings.ToLower(f)
		if f == "" || lower == `\recent` || seen[lower] || strings.ContainsAny(f, " \t\r\n") {
			continue
		}
		if canon, ok := systemFlags[lower]; ok {
			f = canon
		}
		seen[lower] = true
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

func formatFlags(flags []string) string { return strings.Join(normalizeFlags(flags), " ") }

func parseFlags(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, " ")
}

func applyFlags(current []string, op FlagOp, flags []string) []string {
	switch op {
	case FlagsReplace:
		return normalizeFlags(flags)
	case FlagsAdd:
		return normalizeFlags(append(append([]string(nil), current...), flags...))
	default:
		remove := map[string]bool{}
		for _, f := range flags {
			remove[strings.ToLower(f)] = true
		}
		var kept []string
		for _, f := range current {
			if !remove[strings.ToLower(f)] {
				kept = append(kept, f)
			}
		}
		return normalizeFlags(kept)
	}
}
