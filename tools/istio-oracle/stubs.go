package main

import (
	"fmt"
	"io"
)

// Subcommands still to come.
func cmdCompare(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "compare") }
func cmdFacts(args []string, stdout, stderr io.Writer) int   { return notYet(stderr, "facts") }

func notYet(stderr io.Writer, cmd string) int {
	fmt.Fprintf(stderr, "error: istio-oracle %s: not implemented yet\n", cmd)
	return 1
}
