package main

import (
	"os"
	"strings"
	"testing"
)

// docs/istio-check.md shows the deliberate differences as the code has them
// (`istio-oracle deliberate` prints the table).
func TestDocsListTheDeliberateDifferencesOfTheCode(t *testing.T) {
	page, err := os.ReadFile("../../docs/istio-check.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(page), deliberateMarkdown()) {
		t.Fatalf("docs/istio-check.md does not hold the table of deliberate.go; paste the output of `istio-oracle deliberate`:\n%s", deliberateMarkdown())
	}
}
