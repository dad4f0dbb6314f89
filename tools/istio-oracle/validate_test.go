package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeManifests lays out a manifest directory: name -> YAML.
func writeManifests(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const zeroTimeoutVS = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: server
spec:
  hosts: [server]
  http:
  - route:
    - destination: {host: server}
    timeout: 0s
`

func TestValidateNamesFileObjectFieldAndIstiosMessage(t *testing.T) {
	crds, err := defaultCRDFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // substrings, one per expected problem line
	}{
		{"zero route timeout", map[string]string{"vs.yaml": zeroTimeoutVS}, []string{
			"vs.yaml: VirtualService/server: spec: duration must be greater than 1ms [istiod validation]",
			`vs.yaml: VirtualService/server: spec.http[0].timeout: Invalid value: "0s"`,
		}},
		{"unknown field", map[string]string{"dr.yaml": "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server}\nspec:\n  host: server\n  trafficPolicy: {connectionPool: {http: {maxRequestPerConnection: 1}}}\n"}, []string{
			"dr.yaml: DestinationRule/server: spec.trafficPolicy.connectionPool.http.maxRequestPerConnection: unknown field [CRD OpenAPI schema]",
		}},
		{"unknown kind", map[string]string{"w.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"}, []string{
			"w.yaml: Widget/w: apiVersion: unknown kind example.com/v1 Widget",
		}},
		{"core kinds skipped, kustomization ignored", map[string]string{
			"svc.yaml":           "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
			"kustomization.yaml": "resources: [svc.yaml]\n",
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeManifests(t, tc.files)
			var out, notes bytes.Buffer
			n, err := runValidate(dir, crds, &out, &notes)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(tc.want) == 0 {
				if n != 0 || out.Len() != 0 {
					t.Fatalf("want no problems, got:\n%s", out.String())
				}
				if !strings.Contains(notes.String(), "skipped here, core Kubernetes kinds") {
					t.Fatalf("the skipped core kind is not said:\n%s", notes.String())
				}
				return
			}
			if n != len(tc.want) || len(lines) != len(tc.want) {
				t.Fatalf("want %d problems, got %d:\n%s", len(tc.want), n, out.String())
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d: got %q, want it to contain %q", i+1, lines[i], w)
				}
			}
		})
	}
}

func TestIstioManifestsPassValidation(t *testing.T) {
	crds, err := defaultCRDFile()
	if err != nil {
		t.Fatal(err)
	}
	var out, notes bytes.Buffer
	if n, err := runValidate("../../istio", crds, &out, &notes); err != nil || n != 0 {
		t.Fatalf("istio/: %d problems (%v):\n%s", n, err, out.String())
	}
}
