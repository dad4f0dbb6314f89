package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Subcommands still to come.
func cmdRender(args []string, stdout, stderr io.Writer) int  { return notYet(stderr, "render") }
func cmdCompare(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "compare") }
func cmdFacts(args []string, stdout, stderr io.Writer) int   { return notYet(stderr, "facts") }

func notYet(stderr io.Writer, cmd string) int {
	fmt.Fprintf(stderr, "error: istio-oracle %s: not implemented yet\n", cmd)
	return 1
}

// istioRelease names the pinned istiod: the release line from the module's
// VERSION file and the module version.
func istioRelease() string {
	return fmt.Sprintf("%s (istio.io/istio %s)", releaseLine(), istioVersion())
}

func releaseLine() string {
	dir, err := istioModuleDir()
	if err != nil {
		return "unknown"
	}
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(v))
}
