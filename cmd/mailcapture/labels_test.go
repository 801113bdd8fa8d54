package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"mailcapture/labels"
	"mailcapture/store"
)

func asStrings[T ~string](vals []T) []string {
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = string(v)
	}
	return out
}

// declaredLabels lists, per metric and label, the values labels declares.
func declaredLabels() map[string]map[string][]string {
	protocols, routes := asStrings(labels.Protocols), asStrings(labels.Routes)
	return map[string]map[string][]string{
		"mailcapture_logins_total":         {"protocol": protocols, "route": routes, "result": asStrings(labels.LoginResults)},
		"mailcapture_sessions_active":      {"protocol": protocols, "route": routes},
		"mailcapture_session_panics_total": {"protocol": protocols},
		"mailcapture_smtp_messages_total":  {"route": asStrings(labels.SMTPRoutes), "result": asStrings(labels.SMTPResults)},
		"mailcapture_limit_refusals_total": {"limit": asStrings(labels.Limits)},
		"mailcapture_legacy_errors_total":  {"kind": asStrings(labels.LegacyKinds)},
		"mailcapture_accounts":             {"state": {string(store.StateCapturing), string(store.StateCutover), string(store.StateCaptured)}},
		"mailcapture_retirement_blockers":  {"kind": asStrings(labels.RetirementBlockers)},
		"mailcapture_submissions_total":    {"route": asStrings(labels.SubmissionRoutes), "result": asStrings(labels.SubmissionResults)},
	}
}

var seriesRE = regexp.MustCompile(`^(mailcapture_[a-z_]+)\{([^}]*)\}`)
var labelRE = regexp.MustCompile(`([a-z_]+)="([^"]*)"`)

// checkDeclaredLabels fails on any series of a scrape whose label value
// is not one labels declares, and on any declared value missing.
func checkDeclaredLabels(t *testing.T, scrape string) {
	t.Helper()
	declared := declaredLabels()
	seen := map[string]map[string]map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		m := seriesRE.FindStringSubmatch(line)
		if m == nil || strings.HasSuffix(m[1], "_bucket") {
			continue
		}
		want, ok := declared[m[1]]
		if !ok {
			t.Errorf("%s has labels whose values labels does not declare (add it to declaredLabels)", m[1])
			continue
		}
		for _, lv := range labelRE.FindAllStringSubmatch(m[2], -1) {
			allowed, known := want[lv[1]]
			if !known || !slices.Contains(allowed, lv[2]) {
				t.Errorf("%s has the undeclared label value %s=%q", m[1], lv[1], lv[2])
				continue
			}
			if seen[m[1]] == nil {
				seen[m[1]] = map[string]map[string]bool{}
			}
			if seen[m[1]][lv[1]] == nil {
				seen[m[1]][lv[1]] = map[string]bool{}
			}
			seen[m[1]][lv[1]][lv[2]] = true
		}
	}
	for metric, byLabel := range declared {
		for label, values := range byLabel {
			for _, v := range values {
				if !seen[metric][label][v] {
					t.Errorf("%s{%s=%q} is declared but not exported", metric, label, v)
				}
			}
		}
	}
}
