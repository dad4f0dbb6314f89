// istio-oracle puts Istio's own Go code in the loop: istiod's validation and
// the CRDs' CEL rules judge the manifests (validate), istiod's config
// generation renders what the sidecars would receive (render), and compare
// checks the local mesh's rendering against it field by field.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

// exUsage is EX_USAGE: bad flags or arguments.
const exUsage = 64

const usage = `usage:
  istio-oracle validate [--crds FILE] DIR
  istio-oracle render --istio-dir DIR --experiment NAME --pods N --out FILE
  istio-oracle compare ISTIOD_JSON MESH_JSON --source FILE [--istio-dir DIR]
  istio-oracle facts RENDERING_JSON     (what compare reads from one rendering)
  istio-oracle deliberate                (the differences compare leaves out, and why)
  istio-oracle version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exUsage
	}
	switch args[0] {
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "render":
		return cmdRender(args[1:], stdout, stderr)
	case "compare":
		return cmdCompare(args[1:], stdout, stderr)
	case "facts":
		return cmdFacts(args[1:], stdout, stderr)
	case "deliberate":
		fmt.Fprint(stdout, deliberateMarkdown())
		return 0
	case "version":
		fmt.Fprintf(stdout, "istiod %s\n", istioRelease())
		return 0
	default:
		fmt.Fprintf(stderr, "error: unknown command %q\n%s", args[0], usage)
		return exUsage
	}
}

// parseFlags parses flags wherever they stand among the positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	crds := fs.String("crds", "", "Istio CRD file (default: crd-all.gen.yaml of the istio.io/istio module this binary is built with)")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprint(stderr, usage)
		return exUsage
	}
	if *crds == "" {
		if *crds, err = defaultCRDFile(); err != nil {
			fmt.Fprintln(stderr, "error:", err)
			return 1
		}
	}
	n, err := runValidate(pos[0], *crds, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	if n > 0 {
		return 1
	}
	return 0
}
