package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// The host whose client side is compared (the Service clients dial).
const serverHost = "server.default.svc.cluster.local"

// Difference is one line of `compare` output.
type Difference struct {
	File, Object, Field, Istiod, Mesh string
}

func (d Difference) String() string {
	return fmt.Sprintf("%s: %s: %s: istiod %s, mesh %s", d.File, d.Object, d.Field, d.Istiod, d.Mesh)
}

func cmdCompare(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	source := fs.String("source", "", "the DestinationRule file under test, or none")
	dir := fs.String("istio-dir", "istio", "manifest directory the renderings come from (names the file of each difference)")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) != 2 || *source == "" {
		fmt.Fprint(stderr, usage)
		return exUsage
	}
	istiod, err := readRendering(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	mesh, err := readRendering(pos[1])
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	origins, err := locateOrigins(*dir, *source)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	diffs, n := compare(istiod, mesh, origins)
	for _, d := range diffs {
		fmt.Fprintln(stdout, d)
	}
	fmt.Fprintf(stderr, "istio-oracle compare %s: %d fields compared (%s vs %s), %d differences\n", istiod.Experiment, n, istiod.Source, orUnknown(mesh.Source), len(diffs))
	if len(diffs) > 0 {
		return 1
	}
	return 0
}

func orUnknown(s string) string {
	if s == "" {
		return "mesh (no source)"
	}
	return s
}

func readRendering(path string) (*rendering, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &rendering{}
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// origin names the manifest a fact comes from: its file and Kind/name.
type origin struct{ file, object string }

// compare returns the differences, sorted, and how many fields it compared.
func compare(istiod, mesh *rendering, origins map[string]origin) ([]Difference, int) {
	outbound, inbound := clusterNames(serverHost, istiod, mesh)
	inboundOrigin := originDR
	if _, ok := origins[originSidecar]; ok {
		inboundOrigin = originSidecar
	}
	fi := extract(istiod, outbound, inbound, inboundOrigin)
	fm := extract(mesh, outbound, inbound, inboundOrigin)
	keys := map[string]bool{}
	for k := range fi {
		keys[k] = true
	}
	for k := range fm {
		keys[k] = true
	}
	var diffs []Difference
	for k := range keys {
		a, b := fi[k], fm[k]
		if a.Value == b.Value {
			continue
		}
		if p := parentKey(k); p != "" && p != k && fi[p].Value != fm[p].Value {
			continue // the object itself differs (present on one side): said once
		}
		o := a.Origin
		if o == "" {
			o = b.Origin
		}
		where, ok := origins[o]
		if !ok {
			where = origin{"(no " + o + ")", o}
		}
		diffs = append(diffs, Difference{where.file, where.object, k, orAbsent(a.Value), orAbsent(b.Value)})
	}
	sort.Slice(diffs, func(i, j int) bool {
		if diffs[i].File != diffs[j].File {
			return diffs[i].File < diffs[j].File
		}
		return diffs[i].Field < diffs[j].Field
	})
	return diffs, len(keys)
}

// orAbsent: a field one rendering does not have at all (its parent is
// missing, or the raw-JSON comparison found it on one side only).
func orAbsent(v string) string {
	if v == "" {
		return "absent"
	}
	return v
}

// locateOrigins finds, in dir, the file and object behind each kind of fact.
// source is the DestinationRule file under test, or "none".
func locateOrigins(dir, source string) (map[string]origin, error) {
	out := map[string]origin{}
	if source == "none" {
		out[originDR] = origin{"(no DestinationRule)", "istiod defaults"}
	} else {
		objs, err := readManifestFile(source)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if o.U.GetKind() == originDR {
				out[originDR] = origin{source, o.Ref()}
			}
		}
		if _, ok := out[originDR]; !ok {
			return nil, fmt.Errorf("%s: no DestinationRule", source)
		}
	}
	objs, err := readManifestDir(dir)
	if err != nil {
		return nil, err
	}
	drDir := filepath.Join(dir, "destinationrules")
	for _, o := range objs {
		if filepath.Dir(o.File) == drDir {
			continue
		}
		kind := o.U.GetKind()
		switch {
		case kind == originSidecar && o.U.Object["spec"] != nil && hasInboundPool(o):
		case kind == originVS && hostsServer(o):
		case kind == originWasm:
		case kind == originService && o.U.GetName() == "server":
		default:
			continue
		}
		if _, seen := out[kind]; !seen {
			out[kind] = origin{o.File, o.Ref()}
		}
	}
	return out, nil
}

func hasInboundPool(o Object) bool {
	return get(o.U.Object, "spec.inboundConnectionPool") != nil
}

func hostsServer(o Object) bool {
	if len(getList(o.U.Object, "spec.gateways")) > 0 {
		return false // a gateway's routes do not reach the sidecars
	}
	for _, h := range getList(o.U.Object, "spec.hosts") {
		if h == "server" || h == serverHost {
			return true
		}
	}
	return false
}

// cmdFacts prints what compare reads from one rendering, one fact a line:
// a readable summary of istiod's (or the mesh's) translation.
func cmdFacts(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("facts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprint(stderr, usage)
		return exUsage
	}
	r, err := readRendering(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	outbound, inbound := clusterNames(serverHost, r)
	f := extract(r, outbound, inbound, originSidecar)
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintln(stdout, f[k])
	}
	return 0
}
