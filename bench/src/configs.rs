//! The Envoy configurations under test. All share one listener shaped like
//! the server sidecar's inbound one (h2c HCM, node metadata `NAME`). Most
//! answer with a `direct_response`: no upstream, so what is measured is Envoy
//! plus the filter and nothing else, the harshest case. The two "sidecar"
//! configurations are the server pods' sidecar itself, rendered as the local
//! mesh and the filter's tests render it (`sidecar::inbound::server_pod`), in
//! front of the real echo server: a request body, a response body and
//! trailers, so every callback the filter exports can fire.

use std::{net::SocketAddr, path::Path};

use serde_json::{Value, json};
use sidecar::{InboundPort, destination_rule::ClusterPolicy, inbound, wasm_plugin::WasmPluginSpec};
use upstream_tagger::headers::{
    UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD,
};

/// One column of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    NoFilter,
    HeaderMutation,
    EmptyWasm,
    UpstreamTagger,
    Lua,
    /// Inbound sidecar in front of the echo server, no filter.
    SidecarNoFilter,
    /// Inbound sidecar in front of the echo server, with upstream-tagger.
    SidecarTagger,
}

impl Variant {
    /// Table order (and the order of the first round).
    pub const ALL: [Variant; 7] = [
        Variant::NoFilter,
        Variant::HeaderMutation,
        Variant::EmptyWasm,
        Variant::UpstreamTagger,
        Variant::Lua,
        Variant::SidecarNoFilter,
        Variant::SidecarTagger,
    ];

    /// What this configuration is compared with (ratio, added CPU, latency).
    pub fn baseline(self) -> Variant {
        if self.is_sidecar() {
            Variant::SidecarNoFilter
        } else {
            Variant::NoFilter
        }
    }

    /// Routes to the echo server rather than answering itself.
    pub fn is_sidecar(self) -> bool {
        matches!(self, Variant::SidecarNoFilter | Variant::SidecarTagger)
    }

    /// The filter configuration it runs: a sidecar row runs the same
    /// filters as its `direct_response` twin.
    pub fn filters(self) -> Variant {
        match self {
            Variant::SidecarNoFilter => Variant::NoFilter,
            Variant::SidecarTagger => Variant::UpstreamTagger,
            other => other,
        }
    }

    /// Stable name (JSON, file names).
    pub fn key(self) -> &'static str {
        match self {
            Variant::NoFilter => "no-filter",
            Variant::HeaderMutation => "header-mutation",
            Variant::EmptyWasm => "empty-wasm",
            Variant::UpstreamTagger => "upstream-tagger",
            Variant::Lua => "lua",
            Variant::SidecarNoFilter => "sidecar-no-filter",
            Variant::SidecarTagger => "sidecar-upstream-tagger",
        }
    }

    /// Row label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Variant::NoFilter => "no filter",
            Variant::HeaderMutation => "native header_mutation",
            Variant::EmptyWasm => "empty proxy-wasm filter (floor)",
            Variant::UpstreamTagger => "upstream-tagger (default config)",
            Variant::Lua => "Lua equivalent",
            Variant::SidecarNoFilter => "no filter, sidecar → echo server",
            Variant::SidecarTagger => "upstream-tagger, sidecar → echo server",
        }
    }
}

/// What the configurations are built from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The pod name the sidecar's node metadata carries.
    pub pod: &'a str,
    /// `istio/wasmplugin.yaml`, as istiod would translate it.
    pub plugin: &'a WasmPluginSpec,
    /// `istio/sidecar.yaml`'s inbound pool (the sidecar configurations).
    pub inbound_pool: &'a ClusterPolicy,
    pub tagger_wasm: &'a Path,
    pub empty_wasm: &'a Path,
    /// upstream-tagger's effective `max_tracked_connections`; the Lua table
    /// is bounded by the same number.
    pub cap: u32,
    /// The echo server the sidecar configurations route to.
    pub echo: Option<SocketAddr>,
}

/// The Lua filter doing upstream-tagger's job with what Envoy's Lua API
/// offers. Differences, because the API has no equivalent:
/// - no connection id: the key (and the header value) is
///   `downstreamDirectRemoteAddress()` ("ip:port"), unique per live
///   connection, which is what identifies a connection to a reader;
/// - no per-request context object: the count is handed from request to
///   response through the stream's dynamic metadata;
/// - the table is bounded by the same cap, but reset when full instead of
///   evicting the oldest entry (never reached in the throughput runs).
///
/// Lua state is per worker, like the wasm VM, so the table needs no lock.
pub fn lua_script(pod: &str, cap: u32) -> String {
    format!(
        r#"local POD = "{pod}"
local CAP = {cap}
local counts = {{}}
local tracked = 0

function envoy_on_request(handle)
  local ct = handle:headers():get("content-type")
  if ct == nil or string.lower(string.sub(ct, 1, 16)) ~= "application/grpc" then
    return
  end
  local info = handle:streamInfo()
  local id = info:downstreamDirectRemoteAddress()
  local n = counts[id]
  if n == nil then
    if tracked >= CAP then
      counts = {{}}
      tracked = 0
    end
    tracked = tracked + 1
    n = 1
  else
    n = n + 1
  end
  counts[id] = n
  info:dynamicMetadata():set("bench.lua", "n", n)
end

function envoy_on_response(handle)
  local info = handle:streamInfo()
  local meta = info:dynamicMetadata():get("bench.lua")
  if meta == nil then
    return
  end
  local headers = handle:headers()
  headers:replace("{UPSTREAM_POD}", POD)
  headers:replace("{UPSTREAM_CONNECTION_ID}", info:downstreamDirectRemoteAddress())
  headers:replace("{UPSTREAM_CONNECTION_REQUESTS}", string.format("%d", meta["n"]))
end
"#
    )
}

fn overwrite(key: &str, value: &str) -> Value {
    json!({"append": {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}})
}

/// The HTTP filters before the router for `variant`.
pub fn http_filters(variant: Variant, inputs: &Inputs) -> Vec<Value> {
    match variant.filters() {
        Variant::NoFilter => vec![],
        // Native C++: the pod and the connection id (a formatter); Envoy has
        // no per-connection request count to offer.
        Variant::HeaderMutation => vec![json!({
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"response_mutations": [
                    overwrite(UPSTREAM_POD, inputs.pod),
                    overwrite(UPSTREAM_CONNECTION_ID, "%CONNECTION_ID%"),
                ]},
            },
        })],
        Variant::EmptyWasm => {
            // Loaded exactly like the real plugin, only the module differs.
            let spec = WasmPluginSpec {
                name: "empty-filter".into(),
                plugin_name: "empty-filter".into(),
                plugin_config: String::new(),
                ..inputs.plugin.clone()
            };
            vec![spec.envoy_plugin(inputs.empty_wasm).http_filter()]
        }
        Variant::UpstreamTagger => {
            vec![inputs.plugin.envoy_plugin(inputs.tagger_wasm).http_filter()]
        }
        Variant::Lua => vec![json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua_script(inputs.pod, inputs.cap)},
            },
        })],
        Variant::SidecarNoFilter | Variant::SidecarTagger => {
            unreachable!("filters() maps sidecars")
        }
    }
}

fn loopback(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

/// A sidecar configuration: the server pods' sidecar in front of the echo
/// server at `echo`, its filter chain holding the filters of `filters`
/// (upstream-tagger's is the one the sidecar renders; any other takes its
/// place, for pairs the table has no row for).
fn sidecar_bootstrap(filters: Variant, inputs: &Inputs, echo: SocketAddr) -> Value {
    let mut sidecar = inbound::server_pod(
        inputs.pod,
        echo.ip(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![InboundPort::grpc(echo)],
        inputs.inbound_pool,
        inputs.plugin,
        inputs.tagger_wasm,
    );
    sidecar.wasm_filters.clear();
    let mut bootstrap = sidecar.bootstrap();
    let mut chain = http_filters(filters, inputs);
    chain.push(router());
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"] = Value::Array(chain);
    bootstrap
}

/// The whole bootstrap: admin and listener on ephemeral ports (read back
/// from the admin API).
pub fn bootstrap(variant: Variant, inputs: &Inputs) -> Value {
    bootstrap_of(variant.filters(), variant.is_sidecar(), inputs)
}

/// The bootstrap running the filters of `filters` (a `direct_response`
/// variant) either on the `direct_response` route or, with `sidecar`, in
/// front of the echo server ([`sidecar_bootstrap`], once the echo server is
/// known): any filter on either path, also pairs the bench's table has no
/// row for (the empty filter on the real path).
pub fn bootstrap_of(filters: Variant, sidecar: bool, inputs: &Inputs) -> Value {
    if let Some(echo) = inputs.echo.filter(|_| sidecar) {
        return sidecar_bootstrap(filters, inputs, echo);
    }
    let route = json!({"match": {"prefix": "/"}, "direct_response": {"status": 200}});
    // A direct_response carries no gRPC headers of its own: add them.
    let response_headers = vec![
        json!({"header": {"key": "content-type", "value": "application/grpc"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
        json!({"header": {"key": "grpc-status", "value": "0"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
    ];
    let mut http_filters = http_filters(filters, inputs);
    http_filters.push(router());
    let pod = inputs.pod;
    json!({
        "node": {
            "id": format!("sidecar~127.0.0.1~{pod}.default~default.svc.cluster.local"),
            "cluster": "server.default",
            "metadata": {"NAME": pod, "NAMESPACE": "default"},
        },
        "admin": {"address": loopback(0)},
        "static_resources": {"clusters": [], "listeners": [{
            "name": "virtualInbound",
            "address": loopback(0),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "codec_type": "AUTO",
                    "http2_protocol_options": {},
                    "route_config": {
                        "name": "bench",
                        "virtual_hosts": [{
                            "name": "bench",
                            "domains": ["*"],
                            "routes": [route],
                        }],
                        "response_headers_to_add": response_headers,
                    },
                    "http_filters": http_filters,
                },
            }]}],
        }]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> WasmPluginSpec {
        sidecar::manifests::wasm_plugin(&sidecar::manifests::istio_dir(None)).unwrap()
    }

    #[test]
    fn every_variant_has_its_filters_before_the_router() {
        let plugin = plugin();
        let inputs = Inputs {
            pod: "server-abc-12345",
            plugin: &plugin,
            tagger_wasm: Path::new("/x/upstream_tagger.wasm"),
            empty_wasm: Path::new("/x/empty_filter.wasm"),
            cap: 10_000,
            echo: Some("127.0.0.1:30051".parse().unwrap()),
            inbound_pool: &ClusterPolicy::default(),
        };
        let expected = [
            (Variant::NoFilter, vec![]),
            (
                Variant::HeaderMutation,
                vec!["envoy.filters.http.header_mutation"],
            ),
            (
                Variant::EmptyWasm,
                vec![
                    "extensions.istio.io/trafficextension/default.empty-filter~istio-translated-wasmplugin",
                ],
            ),
            (
                Variant::UpstreamTagger,
                vec![
                    "extensions.istio.io/trafficextension/default.upstream-tagger~istio-translated-wasmplugin",
                ],
            ),
            (Variant::Lua, vec!["envoy.filters.http.lua"]),
            (Variant::SidecarNoFilter, vec![]),
            (
                Variant::SidecarTagger,
                vec![
                    "extensions.istio.io/trafficextension/default.upstream-tagger~istio-translated-wasmplugin",
                ],
            ),
        ];
        for (variant, names) in expected {
            let config = bootstrap(variant, &inputs);
            let filters = config
                .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
                .and_then(Value::as_array)
                .unwrap();
            let got: Vec<&str> = filters
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            let mut want = names.clone();
            want.push("envoy.filters.http.router");
            assert_eq!(got, want, "{variant:?}");
            assert_eq!(
                config.pointer("/node/metadata/NAME"),
                Some(&json!("server-abc-12345"))
            );
            let route = config
                .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0")
                .unwrap();
            let clusters = config["static_resources"]["clusters"].as_array().unwrap();
            if variant.is_sidecar() {
                assert_eq!(route["route"]["cluster"], "inbound|30051||", "{variant:?}");
                assert_eq!(
                    clusters[0].pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value"),
                    Some(&json!(30051))
                );
            } else {
                assert!(route.get("direct_response").is_some(), "{variant:?}");
                assert!(clusters.is_empty(), "{variant:?}");
            }
        }
    }

    #[test]
    fn wasm_variants_load_like_istio_and_differ_only_in_module() {
        let plugin = plugin();
        let inputs = Inputs {
            pod: "p",
            plugin: &plugin,
            tagger_wasm: Path::new("/x/upstream_tagger.wasm"),
            empty_wasm: Path::new("/x/empty_filter.wasm"),
            cap: 10_000,
            echo: Some("127.0.0.1:30051".parse().unwrap()),
            inbound_pool: &ClusterPolicy::default(),
        };
        let tagger = &http_filters(Variant::UpstreamTagger, &inputs)[0]["typed_config"]["config"];
        assert_eq!(tagger["root_id"], "upstream-tagger");
        assert_eq!(
            tagger["configuration"]["value"],
            json!(plugin.plugin_config)
        );
        assert_eq!(
            tagger["vm_config"]["code"]["local"]["filename"],
            "/x/upstream_tagger.wasm"
        );
        assert_eq!(
            tagger["vm_config"]["environment_variables"]["host_env_keys"],
            json!(["POD_NAME"])
        );
        let empty = &http_filters(Variant::EmptyWasm, &inputs)[0]["typed_config"]["config"];
        assert_eq!(
            empty["vm_config"]["code"]["local"]["filename"],
            "/x/empty_filter.wasm"
        );
        assert_eq!(
            empty["vm_config"]["runtime"],
            tagger["vm_config"]["runtime"]
        );
        assert_eq!(empty["failure_policy"], tagger["failure_policy"]);
    }

    #[test]
    fn lua_script_uses_the_shared_header_names_and_cap() {
        let script = lua_script("server-x", 10_000);
        for needle in [
            "local POD = \"server-x\"",
            "local CAP = 10000",
            UPSTREAM_POD,
            UPSTREAM_CONNECTION_ID,
            UPSTREAM_CONNECTION_REQUESTS,
            "function envoy_on_request",
            "function envoy_on_response",
        ] {
            assert!(script.contains(needle), "{needle} missing from:\n{script}");
        }
    }
}
