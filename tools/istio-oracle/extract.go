package main

import (
	"fmt"
	"sort"
	"strings"
)

// A Fact is one compared value: the field of an Envoy resource that a
// manifest object decides.
type Fact struct {
	Key    string // "<object> <field>", e.g. "cluster outbound|30051||server.default.svc.cluster.local max_requests_per_connection"
	Origin string // the manifest kind that decides it (names the file in reports)
	Value  string
}

// presentSuffix ends the fact saying whether an object exists at all; when
// that differs, compare reports it alone, not each field of the object.
const presentSuffix = " present"

// parentKey: the "... present" fact of the object key belongs to.
func parentKey(key string) string {
	for _, prefix := range []string{"cluster ", "connection manager routing to ", "route to "} {
		if strings.HasPrefix(key, prefix) {
			rest := strings.TrimPrefix(key, prefix)
			name, _, _ := strings.Cut(rest, " ")
			return prefix + name + presentSuffix
		}
	}
	return ""
}

// Manifest kinds the facts come from.
const (
	originDR      = "DestinationRule"
	originSidecar = "Sidecar" // the inbound pool; the DestinationRule when no Sidecar sets one
	originVS      = "VirtualService"
	originService = "Service" // port protocol (grpc/http) -> codec, HTTP/2 options
	originWasm    = "WasmPlugin"
)

const wasmType = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
const hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

// sidecar is one side of a rendering, decoded as plain JSON.
type sidecar struct {
	Listeners        []any `json:"listeners"`
	Routes           []any `json:"routes"`
	Clusters         []any `json:"clusters"`
	ExtensionConfigs []any `json:"extension_configs"`
}

type rendering struct {
	Experiment string  `json:"experiment"`
	Source     string  `json:"source"`
	Client     sidecar `json:"client"`
	Server     sidecar `json:"server"`
}

// facts is keyed by Fact.Key.
type facts map[string]Fact

func (f facts) add(key, origin string, v any) {
	f[key] = Fact{Key: key, Origin: origin, Value: show(v)}
}

// extract turns a rendering into facts: the client's outbound clusters for
// host (and the connection manager and route that reach each), the server's
// inbound clusters (and the connection manager, route and wasm filter that
// reach each). names lists the clusters to look for (the union of both
// renderings, so a cluster one side lacks is reported, not skipped).
func extract(r *rendering, outbound, inbound []string, inboundOrigin string) facts {
	f := facts{}
	for _, name := range outbound {
		sideFacts(f, &r.Client, name, originDR)
	}
	for _, name := range inbound {
		sideFacts(f, &r.Server, name, inboundOrigin)
	}
	return f
}

// clusterNames: the outbound clusters of host and every inbound cluster, in
// either rendering.
func clusterNames(host string, rs ...*rendering) (outbound, inbound []string) {
	seenOut, seenIn := map[string]bool{}, map[string]bool{}
	for _, r := range rs {
		for _, c := range r.Client.Clusters {
			n := getStr(c, "name")
			if strings.HasPrefix(n, "outbound|") && strings.HasSuffix(n, "||"+host) && !seenOut[n] {
				seenOut[n] = true
				outbound = append(outbound, n)
			}
		}
		for _, c := range r.Server.Clusters {
			n := getStr(c, "name")
			if strings.HasPrefix(n, "inbound|") && !seenIn[n] {
				seenIn[n] = true
				inbound = append(inbound, n)
			}
		}
	}
	sort.Strings(outbound)
	sort.Strings(inbound)
	return outbound, inbound
}

func sideFacts(f facts, s *sidecar, clusterName, clusterOrigin string) {
	c := findByName(s.Clusters, clusterName)
	f.add("cluster "+clusterName+presentSuffix, clusterOrigin, present(c))
	if c != nil {
		clusterFacts(f, "cluster "+clusterName, c, clusterOrigin)
	}
	h := findHCM(s, clusterName)
	hkey := "connection manager routing to " + clusterName
	f.add(hkey+presentSuffix, originService, present(h.hcm))
	if h.hcm != nil {
		hcmFacts(f, hkey, h, s)
	}
	rkey := "route to " + clusterName
	f.add(rkey+presentSuffix, originVS, present(h.route))
	if h.route != nil {
		routeFacts(f, rkey, h.route)
	}
}

func present(v obj) string {
	if v == nil {
		return "no"
	}
	return "yes"
}

func findByName(list []any, name string) obj {
	for _, x := range list {
		if o, ok := x.(obj); ok && getStr(o, "name") == name {
			return o
		}
	}
	return nil
}

// ---- clusters --------------------------------------------------------------

const httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// clusterFacts: the cluster fields the local mesh translates from a
// DestinationRule's trafficPolicy (or the Sidecar's inboundConnectionPool).
// Every other field of the cluster is compared too, as raw JSON, unless the
// deliberate-differences table names it.
func clusterFacts(f facts, key string, c obj, origin string) {
	inbound := strings.HasPrefix(getStr(c, "name"), "inbound|")
	kinds := []string{"cluster"}
	if inbound {
		kinds = append(kinds, "inbound_cluster")
	}
	add := func(field string, origin string, v any) {
		if !isDeliberate(kinds[len(kinds)-1], field) {
			f.add(key+" "+field, origin, v)
		}
	}
	add("lb_policy", origin, orDefault(get(c, "lb_policy"), "ROUND_ROBIN"))
	f.add(key+" connect_timeout", origin, get(c, "connect_timeout"))
	th := getObj(c, "circuit_breakers.thresholds.0")
	for _, field := range []string{"max_connections", "max_pending_requests", "max_requests", "max_retries", "track_remaining"} {
		v := get(th, field)
		if field == "track_remaining" {
			v = orDefault(v, false) // a plain bool: absent is false
		}
		f.add(key+" circuit_breakers.thresholds[0]."+field, origin, v)
	}
	f.add(key+" circuit_breakers.thresholds (count)", origin, len(getList(c, "circuit_breakers.thresholds")))
	// HTTP protocol options: the typed extension, or the deprecated cluster fields.
	po := getObj(getObj(c, "typed_extension_protocol_options")[httpOptionsKey], "") // the key holds dots
	common := getObj(po, "common_http_protocol_options")
	for _, field := range []string{"max_requests_per_connection", "idle_timeout", "max_connection_duration", "max_stream_duration", "max_headers_count", "headers_with_underscores_action"} {
		v := get(common, field)
		if v == nil && field == "max_requests_per_connection" {
			v = get(c, "max_requests_per_connection")
		}
		f.add(key+" "+field, origin, v)
	}
	proto, h2 := upstreamProtocol(c, po)
	f.add(key+" upstream protocol", originService, proto)
	f.add(key+" http2_protocol_options", origin, h2)
	f.add(key+" tcp_keepalive", origin, get(c, "upstream_connection_options.tcp_keepalive"))
	f.add(key+" outlier_detection", origin, get(c, "outlier_detection"))
	for _, field := range []string{"ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config", "round_robin_lb_config", "original_dst_lb_config"} {
		add(field, origin, get(c, field))
	}
	handled := map[string]bool{
		"name": true, "lb_policy": true, "connect_timeout": true, "circuit_breakers": true,
		"typed_extension_protocol_options": true, "max_requests_per_connection": true,
		"http2_protocol_options": true, "upstream_connection_options": true, "outlier_detection": true,
		"ring_hash_lb_config": true, "maglev_lb_config": true, "least_request_lb_config": true,
		"round_robin_lb_config": true, "original_dst_lb_config": true,
	}
	rest(f, key, c, handled, origin, kinds...)
	for k, v := range getObj(c, "typed_extension_protocol_options") {
		if k != httpOptionsKey {
			f.add(key+" typed_extension_protocol_options "+k, origin, v)
		}
	}
	// Keys of the protocol options other than those above.
	poHandled := map[string]bool{"@type": true, "common_http_protocol_options": true, "explicit_http_config": true, "use_downstream_protocol_config": true, "auto_config": true}
	rest(f, key+" "+httpOptionsKey, po, poHandled, origin, "cluster_http_options")
}

// upstreamProtocol: "h2", "http1", "downstream" (useClientProtocol) or
// "auto", and the HTTP/2 options it carries.
func upstreamProtocol(c, po obj) (string, any) {
	switch {
	case get(po, "explicit_http_config.http2_protocol_options") != nil:
		return "h2", get(po, "explicit_http_config.http2_protocol_options")
	case get(po, "explicit_http_config") != nil:
		return "http1", nil
	case get(po, "use_downstream_protocol_config") != nil:
		return "downstream", get(po, "use_downstream_protocol_config.http2_protocol_options")
	case get(po, "auto_config") != nil:
		return "auto", get(po, "auto_config.http2_protocol_options")
	case get(c, "http2_protocol_options") != nil:
		return "h2", get(c, "http2_protocol_options")
	}
	return "http1", nil
}

func orDefault(v any, def any) any {
	if v == nil {
		return def
	}
	return v
}

// rest compares every remaining key of o as raw JSON, except the
// deliberate differences of kind.
func rest(f facts, key string, o obj, handled map[string]bool, origin string, kinds ...string) {
next:
	for k, v := range o {
		if handled[k] {
			continue
		}
		for _, kind := range kinds {
			if isDeliberate(kind, k) {
				continue next
			}
		}
		f.add(key+" "+k, origin, v)
	}
}

// ---- connection managers and routes ----------------------------------------

// hcmRef is the HTTP connection manager whose routes reach a cluster, with
// the route that does.
type hcmRef struct {
	hcm     obj
	filters []any // its http_filters
	route   obj
}

// findHCM finds the connection manager routing to cluster, whether it names
// its routes by RDS (route_config_name, resolved in s.Routes) or inlines
// them (route_config). Of several filter chains (istiod's virtualInbound has
// one per transport), the plaintext one is taken: the local mesh is
// plaintext (see the deliberate differences).
func findHCM(s *sidecar, cluster string) hcmRef {
	var found []hcmRef
	for _, l := range s.Listeners {
		chains := getList(l, "filter_chains")
		if dc := getObj(l, "default_filter_chain"); dc != nil {
			chains = append(chains, dc)
		}
		for _, fc := range chains {
			for _, nf := range getList(fc, "filters") {
				h := getObj(nf, "typed_config")
				if getStr(h, "@type") != hcmType {
					continue
				}
				rc := getObj(h, "route_config")
				if name := getStr(h, "rds.route_config_name"); name != "" {
					rc = findByName(s.Routes, name)
				}
				if rt := routeTo(rc, cluster); rt != nil {
					ref := hcmRef{hcm: h, filters: getList(h, "http_filters"), route: rt}
					if getStr(fc, "filter_chain_match.transport_protocol") == "tls" {
						found = append(found, ref) // kept only if nothing plaintext routes there
						continue
					}
					return ref
				}
			}
		}
	}
	if len(found) > 0 {
		return found[0]
	}
	return hcmRef{}
}

// routeTo: the first route of rc whose action targets cluster.
func routeTo(rc obj, cluster string) obj {
	for _, vh := range getList(rc, "virtual_hosts") {
		for _, r := range getList(vh, "routes") {
			if getStr(r, "route.cluster") == cluster {
				return r.(obj)
			}
			for _, wc := range getList(r, "route.weighted_clusters.clusters") {
				if getStr(wc, "name") == cluster {
					return r.(obj)
				}
			}
		}
	}
	return nil
}

func hcmFacts(f facts, key string, h hcmRef, s *sidecar) {
	f.add(key+" stream_idle_timeout", originService, get(h.hcm, "stream_idle_timeout"))
	f.add(key+" http2_protocol_options", originService, get(h.hcm, "http2_protocol_options"))
	f.add(key+" codec_type", originService, orDefault(get(h.hcm, "codec_type"), "AUTO"))
	f.add(key+" common_http_protocol_options", originService, get(h.hcm, "common_http_protocol_options"))
	handled := map[string]bool{"@type": true, "stream_idle_timeout": true, "http2_protocol_options": true, "codec_type": true,
		"common_http_protocol_options": true, "http_filters": true, "rds": true, "route_config": true}
	rest(f, key, h.hcm, handled, originService, "hcm")

	// The HTTP filter chain, in order, without the filters the local mesh
	// leaves out on purpose; wasm filters are compared field by field.
	var chain []string
	for _, hf := range h.filters {
		name := getStr(hf, "name")
		if isDeliberate("http_filter", name) {
			continue
		}
		cfg := getObj(hf, "typed_config")
		if cd := getObj(hf, "config_discovery"); cd != nil {
			if !isDeliberate("http_filter_field", "config_discovery") {
				f.add(key+" "+name+" config_discovery", originWasm, cd)
			}
			// ECDS: the config is the extension config of that name.
			cfg = getObj(findByName(s.ExtensionConfigs, name), "typed_config")
			if cfg == nil {
				f.add(key+" ECDS "+name+" resolved", originWasm, "no extension_config of that name")
			}
		}
		if getStr(cfg, "@type") == wasmType {
			wasmFacts(f, key+" wasm filter "+name, cfg)
			chain = append(chain, name)
			continue
		}
		chain = append(chain, name)
	}
	f.add(key+" http_filters (order)", originWasm, strings.Join(chain, ", "))
}

func wasmFacts(f facts, key string, w obj) {
	cfg := getObj(w, "config")
	f.add(key+" config.name", originWasm, get(cfg, "name"))
	f.add(key+" root_id", originWasm, get(cfg, "root_id"))
	f.add(key+" configuration", originWasm, get(cfg, "configuration"))
	f.add(key+" vm_config.runtime", originWasm, get(cfg, "vm_config.runtime"))
	f.add(key+" vm_config.vm_id", originWasm, get(cfg, "vm_config.vm_id"))
	f.add(key+" vm_config.environment_variables", originWasm, agentEnv(getObj(cfg, "vm_config.environment_variables")))
	f.add(key+" failure_policy", originWasm, get(cfg, "failure_policy"))
	f.add(key+" fail_open", originWasm, get(cfg, "fail_open"))
	handled := map[string]bool{"name": true, "root_id": true, "configuration": true, "vm_config": true, "failure_policy": true, "fail_open": true}
	rest(f, key, cfg, handled, originWasm, "wasm")
	vmHandled := map[string]bool{"runtime": true, "vm_id": true, "environment_variables": true}
	rest(f, key+" vm_config", getObj(cfg, "vm_config"), vmHandled, originWasm, "wasm_vm")
}

// agentEnv is the VM environment as Envoy gets it from istio-agent, which
// deletes every ISTIO_META_* key istiod adds (pkg/wasm/convert.go
// rewriteVMConfig) and drops an emptied key_values.
func agentEnv(env obj) any {
	if env == nil {
		return nil
	}
	out := obj{}
	for k, v := range env {
		out[k] = v
	}
	if kv := getObj(env, "key_values"); kv != nil {
		kept := obj{}
		for k, v := range kv {
			if !isDeliberate("wasm_env", k) {
				kept[k] = v
			}
		}
		delete(out, "key_values")
		if len(kept) > 0 {
			out["key_values"] = kept
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func routeFacts(f facts, key string, r obj) {
	f.add(key+" timeout", originVS, get(r, "route.timeout"))
	f.add(key+" retry_policy", originVS, get(r, "route.retry_policy"))
	f.add(key+" max_grpc_timeout", originVS, get(r, "route.max_grpc_timeout"))
	f.add(key+" max_stream_duration", originVS, get(r, "route.max_stream_duration"))
	f.add(key+" idle_timeout", originVS, get(r, "route.idle_timeout"))
	f.add(key+" hash_policy", originDR, get(r, "route.hash_policy"))
	handled := map[string]bool{"cluster": true, "weighted_clusters": true, "timeout": true, "retry_policy": true,
		"max_grpc_timeout": true, "max_stream_duration": true, "idle_timeout": true, "hash_policy": true}
	rest(f, key, getObj(r, "route"), handled, originVS, "route_action")
	rest(f, key, r, map[string]bool{"route": true}, originVS, "route")
}

func (fa Fact) String() string { return fmt.Sprintf("%s = %s", fa.Key, fa.Value) }
