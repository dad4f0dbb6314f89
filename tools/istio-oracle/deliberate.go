package main

import "strings"

// The deliberate differences between istiod's rendering and the local mesh,
// in ONE place. compare leaves out exactly these, and nothing else: every
// other field of the compared clusters, routes, connection managers and
// wasm filters is compared, the known ones one by one, the rest as raw JSON.
// Each entry says why it cannot change what the demo shows (which pod serves
// a call, how calls share connections, which calls fail, what the filter
// stamps on a response).

type deliberate struct {
	kind   string // where: cluster, inbound_cluster, hcm, http_filter, route, route_action, wasm_env, wasm_vm
	fields []string
	why    string
}

var deliberateDifferences = []deliberate{
	{"cluster", []string{"eds_cluster_config"},
		"Where EDS endpoints come from: istiod pushes them over ADS; the local mesh has no control plane and writes them to a file the Envoy watches (path_config_source), updated as pods come and go. Both clusters are type EDS (compared), the same pods under the same lb_policy and pool settings: calls spread over them the same way."},
	{"inbound_cluster", []string{"type", "lb_policy", "load_assignment", "upstream_bind_config", "cleanup_interval", "original_dst_lb_config"},
		"Inbound: istiod forwards to the original destination (ORIGINAL_DST, CLUSTER_PROVIDED, bound to 127.0.0.6 for iptables); the local mesh has no iptables and names the app's loopback port (STATIC, one endpoint). One endpoint either way: the pool settings, compared, are what count."},
	{"cluster", []string{"transport_socket", "transport_socket_matches"},
		"Plaintext h2c between sidecars instead of Istio mTLS (ALPN istio-h2): TLS changes no load-balancing, pooling or routing decision."},
	{"cluster", []string{"metadata", "filters", "alt_stat_name"},
		"Istio telemetry: cluster metadata read by istio.stats, the upstream istio.metadata_exchange filter, stat names. Not in upstream Envoy; they only label metrics."},
	{"cluster", []string{"common_lb_config"},
		"Locality-weighted load balancing: every endpoint sits in one locality (one node, no topology labels), so it cannot change which pod is picked."},
	{"http_filter", []string{"istio.metadata_exchange", "istio_authn", "istio.authn", "istio.stats", "istio.alpn"},
		"Istio-only filters, not in upstream Envoy: peer metadata, mTLS identity, Istio metrics, the istio-h2 ALPN for mTLS. None touches routing, pooling or response headers."},
	{"http_filter", []string{"envoy.filters.http.grpc_stats", "envoy.filters.http.fault", "envoy.filters.http.cors"},
		"Filters istiod puts in every HTTP connection manager that do nothing here: fault and cors act only on per-route policy (none is set), grpc_stats only counts. The wasm filter keeps its place relative to the filters that remain (the router last)."},
	{"hcm", []string{"stat_prefix", "access_log", "tracing", "request_id_extension", "generate_request_id", "server_name", "server_header_transformation"},
		"Stat names, access logs, tracing and request ids: observability only."},
	{"hcm", []string{"use_remote_address", "forward_client_cert_details", "set_current_client_cert_details", "internal_address_config", "xff_num_trusted_hops", "skip_xff_append"},
		"Client address and certificate headers (XFF, XFCC): the mesh is plaintext and loopback; the echo server and the filter read neither."},
	{"hcm", []string{"normalize_path", "path_with_escaped_slashes_action", "merge_slashes", "upgrade_configs", "strip_port_mode", "strip_matching_host_port", "proxy_100_continue"},
		"Request normalisation, upgrades (websocket/CONNECT) and Expect: 100-continue: gRPC paths are already normal; no client here upgrades or sends Expect."},
	{"route", []string{"name", "match", "decorator", "metadata", "typed_per_filter_config"},
		"Route naming and matching: the local mesh has one service per listener (the client dials its own sidecar), so the match picks the same destination; decorator and metadata feed tracing and telemetry."},
	{"route_action", []string{"cluster_not_found_response_code"},
		"The cluster exists in both renderings (compared above), so the not-found code never applies."},
	{"http_filter_field", []string{"config_discovery"},
		"ECDS instead of an inline filter: istiod sends the wasm filter as an extension config (compared field by field, as the filter Envoy runs); how it is fetched (ADS, type_urls Wasm+RBAC, the RBAC allow/deny stand-in istio-agent uses when the module cannot be fetched) is the agent's business. The local mesh loads the module from a local file at start; failure_policy, compared, says what happens if it does not load."},
	{"wasm_env", []string{"ISTIO_META_*"},
		"VM environment keys istiod adds for istio-agent (resource version, pull policy, pull secret): the agent deletes every ISTIO_META_* key before Envoy gets the filter (pkg/wasm/convert.go rewriteVMConfig), so neither Envoy nor the module sees them."},
	{"wasm_vm", []string{"code"},
		"Module source: istiod names the OCI image, istio-agent downloads it and rewrites the source to a local file; the local mesh names the local file of the same build directly."},
}

// isDeliberate: is field of kind a listed deliberate difference?
func isDeliberate(kind, field string) bool {
	for _, d := range deliberateDifferences {
		if d.kind != kind {
			continue
		}
		for _, f := range d.fields {
			if f == field || (strings.HasSuffix(f, "*") && strings.HasPrefix(field, strings.TrimSuffix(f, "*"))) {
				return true
			}
		}
	}
	return false
}

// deliberateMarkdown is the table as docs/istio-check.md shows it (a test
// keeps the page in step with the code).
func deliberateMarkdown() string {
	var b strings.Builder
	b.WriteString("| where | fields | why it cannot change what the demo shows |\n|---|---|---|\n")
	for _, d := range deliberateDifferences {
		fields := make([]string, len(d.fields))
		for i, f := range d.fields {
			fields[i] = "`" + strings.ReplaceAll(f, "|", `\|`) + "`"
		}
		b.WriteString("| " + d.kind + " | " + strings.Join(fields, ", ") + " | " + d.why + " |\n")
	}
	return b.String()
}
