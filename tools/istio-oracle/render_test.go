package main

import (
	"encoding/json"
	"testing"
)

// istiod's rendering of istio/ for the reuse experiment: the DestinationRule
// reaches the client's cluster; the Sidecar, not the DestinationRule, sets
// the server's inbound pool; the WasmPlugin arrives by ECDS.
func TestRenderReuseThroughIstiod(t *testing.T) {
	quietIstioLogs()
	r, err := render("../../istio", "reuse", 3)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var rr rendering
	if err := json.Unmarshal(raw, &rr); err != nil {
		t.Fatal(err)
	}
	outbound, inbound := clusterNames(serverHost, &rr)
	f := extract(&rr, outbound, inbound, originSidecar)
	for key, want := range map[string]string{
		"cluster outbound|30051||server.default.svc.cluster.local max_requests_per_connection":                       "100",
		"cluster outbound|30051||server.default.svc.cluster.local circuit_breakers.thresholds[0].max_requests":       "50",
		"cluster outbound|30051||server.default.svc.cluster.local lb_policy":                                         "ROUND_ROBIN",
		"cluster inbound|30051|| max_requests_per_connection":                                                        "unset",
		"cluster inbound|30051|| circuit_breakers.thresholds[0].max_requests":                                        "4294967295",
		"cluster inbound|8080|| max_requests_per_connection":                                                         "unset",
		"route to outbound|30051||server.default.svc.cluster.local timeout":                                          "0s",
		"connection manager routing to inbound|30051|| http_filters (order)":                                         wasmName + ", envoy.filters.http.router",
		"connection manager routing to inbound|30051|| wasm filter " + wasmName + " failure_policy":                  "FAIL_OPEN",
		"connection manager routing to inbound|30051|| wasm filter " + wasmName + " vm_config.environment_variables": `{"host_env_keys":["POD_NAME"]}`,
	} {
		if got := f[key].Value; got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}
