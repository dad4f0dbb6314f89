package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Object is one YAML document of a manifest file.
type Object struct {
	File string // path as given on the command line (relative paths stay relative)
	Doc  int    // 0-based document index in File
	JSON []byte // the document as JSON
	U    *unstructured.Unstructured
}

// Ref is how every report names an object: Kind/name.
func (o Object) Ref() string { return o.U.GetKind() + "/" + o.U.GetName() }

// Group is the API group of the object ("" for core/v1).
func (o Object) Group() string { return o.U.GroupVersionKind().Group }

// readManifestDir reads every *.yaml under dir (recursively, sorted), skipping
// kustomization.yaml, which is kustomize's input, not an object.
func readManifestDir(dir string) ([]Object, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".yaml") || d.Name() == "kustomization.yaml" {
			return nil
		}
		files = append(files, path)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.yaml manifests", dir)
	}
	sort.Strings(files)
	var out []Object
	for _, f := range files {
		objs, err := readManifestFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

// readManifestFile splits a file into its YAML documents (empty ones dropped).
func readManifestFile(path string) ([]Object, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var out []Object
	for doc := 0; ; doc++ {
		chunk, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, doc+1, err)
		}
		js, err := yaml.YAMLToJSON(chunk)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, doc+1, err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, doc+1, err)
		}
		out = append(out, Object{File: path, Doc: doc, JSON: js, U: u})
	}
	return out, nil
}

// isIstioGroup: the API groups whose objects istiod owns (networking,
// security, extensions, telemetry .istio.io).
func isIstioGroup(group string) bool { return strings.HasSuffix(group, ".istio.io") }

// isCoreKubernetesGroup: core/v1 and the built-in groups (apps, batch,
// policy, *.k8s.io, ...): kubernetes-validate checks them in tests/manifests.
func isCoreKubernetesGroup(group string) bool {
	return group == "" || !strings.Contains(group, ".") || strings.HasSuffix(group, ".k8s.io")
}
