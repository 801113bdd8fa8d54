package dashboard

import (
	"bytes"
	"os"
	"testing"
)

// TestCommittedJSONIsGenerated: the shipped JSON is this package's output
// (regenerate with go generate ./monitoring/...).
func TestCommittedJSONIsGenerated(t *testing.T) {
	want, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../grafana/mailcapture-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("monitoring/grafana/mailcapture-dashboard.json differs from the generated dashboard: run go generate ./monitoring/...")
	}
}
