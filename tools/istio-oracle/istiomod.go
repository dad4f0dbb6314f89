package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
)

const istioModule = "istio.io/istio"

// istioVersion is the istio.io/istio module version this binary was built
// against (go.mod pins it; `go version -m` shows it too).
func istioVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == istioModule {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "unknown"
}

// istioModuleDir is the istio.io/istio source tree in the Go module cache:
// the module ships its CRDs (manifests/charts/base/files/crd-all.gen.yaml),
// so the oracle needs no Istio file outside the module it is built from.
func istioModuleDir() (string, error) {
	v := istioVersion()
	if v == "unknown" || v == "" {
		return "", fmt.Errorf("no %s version in the build info", istioModule)
	}
	cache := os.Getenv("GOMODCACHE")
	if cache == "" {
		if out, err := exec.Command("go", "env", "GOMODCACHE").Output(); err == nil {
			cache = strings.TrimSpace(string(out))
		}
	}
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, "go", "pkg", "mod")
	}
	dir := filepath.Join(cache, istioModule+"@"+v)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("%s@%s is not in the module cache (%s) - fix: cd tools/istio-oracle && go mod download %s", istioModule, v, cache, istioModule)
	}
	return dir, nil
}

func defaultCRDFile() (string, error) {
	dir, err := istioModuleDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "manifests", "charts", "base", "files", "crd-all.gen.yaml"), nil
}
