package capture

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
)

// BulkAccount is one account of a bulk capture; Password is empty when a
// master user logs in for it.
type BulkAccount struct {
	Name     string
	Password string
}

// ReadCSV reads "account,password" records (RFC 4180 quoting; a first
// record "account,password" is taken as a header). Errors name the line.
func ReadCSV(r io.Reader) ([]BulkAccount, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	var out []BulkAccount
	seen := map[string]int{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if len(rec) != 2 {
			return nil, fmt.Errorf("line %d: want 2 fields (account,password), got %d", line, len(rec))
		}
		name := strings.TrimSpace(rec[0])
		if len(out) == 0 && strings.EqualFold(name, "account") && strings.EqualFold(strings.TrimSpace(rec[1]), "password") {
			continue
		}
		if name == "" || rec[1] == "" {
			return nil, fmt.Errorf("line %d: empty account or password", line)
		}
		if first, dup := seen[strings.ToLower(name)]; dup {
			return nil, fmt.Errorf("line %d: account %s already on line %d", line, name, first)
		}
		seen[strings.ToLower(name)] = line
		out = append(out, BulkAccount{Name: name, Password: rec[1]})
	}
	return out, nil
}

// ReadAccountList reads one account name a line; blank lines and lines
// starting with # are skipped.
func ReadAccountList(r io.Reader) ([]BulkAccount, error) {
	sc := bufio.NewScanner(r)
	var out []BulkAccount
	seen := map[string]int{}
	for line := 1; sc.Scan(); line++ {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		if strings.ContainsAny(name, " \t,") {
			return nil, fmt.Errorf("line %d: %q is not an account name", line, name)
		}
		if first, dup := seen[strings.ToLower(name)]; dup {
			return nil, fmt.Errorf("line %d: account %s already on line %d", line, name, first)
		}
		seen[strings.ToLower(name)] = line
		out = append(out, BulkAccount{Name: name})
	}
	return out, sc.Err()
}
