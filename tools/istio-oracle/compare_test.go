package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// A client cluster as istiod renders it (EDS over ADS, mTLS) and as the
// local mesh does (EDS from a file, plaintext), differing only where the
// test says.
func clientCluster(maxReqPerConn int, mesh bool) map[string]any {
	c := map[string]any{
		"name":            "outbound|30051||server.default.svc.cluster.local",
		"connect_timeout": "10s",
		"circuit_breakers": map[string]any{"thresholds": []any{map[string]any{
			"max_connections": 4294967295, "max_pending_requests": 4294967295,
			"max_requests": 4294967295, "max_retries": 4294967295, "track_remaining": true,
		}}},
		"typed_extension_protocol_options": map[string]any{httpOptionsKey: map[string]any{
			"@type":                        "type.googleapis.com/" + httpOptionsKey,
			"common_http_protocol_options": map[string]any{"idle_timeout": "3600s", "max_requests_per_connection": maxReqPerConn},
			"explicit_http_config":         map[string]any{"http2_protocol_options": map[string]any{}},
		}},
	}
	c["type"] = "EDS"
	if mesh {
		c["eds_cluster_config"] = map[string]any{"service_name": c["name"], "eds_config": map[string]any{
			"path_config_source": map[string]any{"path": "/m/eds.json"}}}
	} else {
		c["eds_cluster_config"] = map[string]any{"service_name": c["name"], "eds_config": map[string]any{"ads": map[string]any{}}}
		c["transport_socket_matches"] = []any{map[string]any{"name": "tlsMode-istio"}}
	}
	return c
}

func routeConfig(name string) map[string]any {
	return map[string]any{"name": name, "virtual_hosts": []any{map[string]any{
		"name": "server", "domains": []any{"*"},
		"routes": []any{map[string]any{"route": map[string]any{
			"cluster": "outbound|30051||server.default.svc.cluster.local", "timeout": "0s", "max_grpc_timeout": "0s",
		}}},
	}}}
}

// hcmListener: the connection manager either names its routes by RDS or
// carries them inline; wasm either by ECDS or inline.
func hcmListener(rdsName string, inline map[string]any, filters []any) map[string]any {
	h := map[string]any{"@type": hcmType, "stream_idle_timeout": "0s", "http_filters": filters}
	if rdsName != "" {
		h["rds"] = map[string]any{"route_config_name": rdsName}
	} else {
		h["route_config"] = inline
	}
	return map[string]any{"name": "l", "filter_chains": []any{map[string]any{"filters": []any{map[string]any{
		"name": "envoy.filters.network.http_connection_manager", "typed_config": h,
	}}}}}
}

const wasmName = "extensions.istio.io/trafficextension/default.upstream-tagger~istio-translated-wasmplugin"

func wasmTyped(env map[string]any) map[string]any {
	return map[string]any{"@type": wasmType, "config": map[string]any{
		"name": "default.upstream-tagger~istio-translated-wasmplugin", "root_id": "upstream-tagger",
		"configuration":  map[string]any{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": `{"pod_header":"x-upstream-pod"}`},
		"vm_config":      map[string]any{"runtime": "envoy.wasm.runtime.v8", "environment_variables": env},
		"failure_policy": "FAIL_OPEN",
	}}
}

func inboundServer(ecds bool, env map[string]any) map[string]any {
	router := map[string]any{"name": "envoy.filters.http.router"}
	rc := map[string]any{"name": "inbound|30051||", "virtual_hosts": []any{map[string]any{"name": "inbound", "routes": []any{
		map[string]any{"route": map[string]any{"cluster": "inbound|30051||", "timeout": "0s"}},
	}}}}
	s := map[string]any{"clusters": []any{map[string]any{"name": "inbound|30051||", "connect_timeout": "10s"}}}
	if ecds {
		filters := []any{
			map[string]any{"name": "istio.metadata_exchange"},
			map[string]any{"name": wasmName, "config_discovery": map[string]any{"type_urls": []any{wasmType}}},
			router,
		}
		s["listeners"] = []any{hcmListener("", rc, filters)}
		s["extension_configs"] = []any{map[string]any{"name": wasmName, "typed_config": wasmTyped(env)}}
	} else {
		s["listeners"] = []any{hcmListener("", rc, []any{map[string]any{"name": wasmName, "typed_config": wasmTyped(env)}, router})}
	}
	return s
}

// render builds a rendering the way the two sides differ: istiod uses RDS by
// name and ECDS; the mesh inlines both.
func makeRendering(t *testing.T, istiod bool, maxReqPerConn int) *rendering {
	t.Helper()
	var client map[string]any
	if istiod {
		client = map[string]any{
			"listeners": []any{hcmListener("30051", nil, []any{map[string]any{"name": "envoy.filters.http.router"}})},
			"routes":    []any{routeConfig("30051")},
			"clusters":  []any{clientCluster(maxReqPerConn, false)},
		}
	} else {
		client = map[string]any{
			"listeners": []any{hcmListener("", routeConfig("local"), []any{map[string]any{"name": "envoy.filters.http.router"}})},
			"clusters":  []any{clientCluster(maxReqPerConn, true)},
		}
	}
	env := map[string]any{"host_env_keys": []any{"POD_NAME"}}
	if istiod {
		env["key_values"] = map[string]any{"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
	}
	raw, err := json.Marshal(map[string]any{"experiment": "reuse", "source": "test", "client": client, "server": inboundServer(istiod, env)})
	if err != nil {
		t.Fatal(err)
	}
	r := &rendering{}
	if err := json.Unmarshal(raw, r); err != nil {
		t.Fatal(err)
	}
	return r
}

var testOrigins = map[string]origin{
	originDR:   {"istio/destinationrules/reuse.yaml", "DestinationRule/server"},
	originWasm: {"istio/wasmplugin.yaml", "WasmPlugin/upstream-tagger"},
}

func TestSameConfigThroughRDSAndECDSOrInlineHasNoDifference(t *testing.T) {
	diffs, n := compare(makeRendering(t, true, 100), makeRendering(t, false, 100), testOrigins)
	if len(diffs) != 0 {
		t.Fatalf("want no differences, got:\n%s", joinDiffs(diffs))
	}
	if n < 30 {
		t.Fatalf("compared only %d fields", n)
	}
}

func TestMaxRequestsPerConnectionDifferenceIsReportedNamingTheField(t *testing.T) {
	diffs, _ := compare(makeRendering(t, true, 100), makeRendering(t, false, 7), testOrigins)
	if len(diffs) != 1 {
		t.Fatalf("want exactly one difference, got:\n%s", joinDiffs(diffs))
	}
	got := diffs[0].String()
	want := "istio/destinationrules/reuse.yaml: DestinationRule/server: cluster outbound|30051||server.default.svc.cluster.local max_requests_per_connection: istiod 100, mesh 7"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestFieldsNotListedAsDeliberateAreCompared(t *testing.T) {
	mesh := makeRendering(t, false, 100)
	c := mesh.Client.Clusters[0].(obj)
	c["dns_lookup_family"] = "V4_ONLY" // a field no table names
	diffs, _ := compare(makeRendering(t, true, 100), mesh, testOrigins)
	if len(diffs) != 1 || !strings.HasSuffix(diffs[0].Field, " dns_lookup_family") || diffs[0].Istiod != "absent" {
		t.Fatalf("want the unlisted field reported, got:\n%s", joinDiffs(diffs))
	}
}

func TestMissingClusterIsReported(t *testing.T) {
	mesh := makeRendering(t, false, 100)
	mesh.Server.Clusters = nil
	diffs, _ := compare(makeRendering(t, true, 100), mesh, testOrigins)
	// Said once, not once per field of the missing cluster.
	if len(diffs) != 1 || diffs[0].Field != "cluster inbound|30051|| present" || diffs[0].Istiod != "yes" || diffs[0].Mesh != "no" {
		t.Fatalf("want the missing inbound cluster reported once, got:\n%s", joinDiffs(diffs))
	}
}

func TestWasmFilterPositionIsCompared(t *testing.T) {
	mesh := makeRendering(t, false, 100)
	l := mesh.Server.Listeners[0]
	filters := getList(l, "filter_chains.0.filters.0.typed_config.http_filters")
	filters[0], filters[1] = filters[1], filters[0] // router before the wasm filter
	diffs, _ := compare(makeRendering(t, true, 100), mesh, testOrigins)
	if len(diffs) != 1 || !strings.HasSuffix(diffs[0].Field, "http_filters (order)") || diffs[0].File != "istio/wasmplugin.yaml" {
		t.Fatalf("want the filter order reported against the WasmPlugin, got:\n%s", joinDiffs(diffs))
	}
}

func TestNormalizeMakesEqualDurationsAndNumbersEqual(t *testing.T) {
	for _, tc := range []struct{ a, b any }{
		{"3600s", "3600.000s"},
		{"0.001s", "0.001000s"},
		{"4294967295", float64(4294967295)},
	} {
		if show(tc.a) != show(tc.b) {
			t.Errorf("%v and %v print differently: %s vs %s", tc.a, tc.b, show(tc.a), show(tc.b))
		}
	}
}

func joinDiffs(ds []Difference) string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteString(d.String() + "\n")
	}
	return b.String()
}
