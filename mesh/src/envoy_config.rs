//! Envoy bootstraps for the local mesh: the L4 "Service" (kube-proxy), the
//! client sidecar (outbound) and the server sidecars (inbound), with the
//! fields istiod sets for our manifests (`mesh render` writes these same
//! resources for the comparison with istiod's own rendering).
//!
//! Deliberate differences from istiod, the one list of them (the Go
//! comparer in `tools/istio-oracle` skips exactly these fields). None changes
//! what the demo shows, which is per-request balancing, connection pools and
//! circuit breakers: the same Envoy cluster code with the same fields.
//! - Endpoints are STATIC loopback addresses (`127.<subnet>.x.y`), not EDS
//!   (outbound) or ORIGINAL_DST/127.0.0.6-bound (inbound): one machine has
//!   no control plane and no iptables; the load balancer sees the same set of
//!   hosts either way.
//! - Sidecar ↔ sidecar is plaintext h2c, not mTLS with ALPN `istio-h2`:
//!   there is no CA; HTTP/2 framing, streams and connection reuse are the
//!   same, only the transport socket differs.
//! - No iptables: the client app dials its sidecar's outbound listener, and
//!   the server sidecar listens on its own port (15006) in front of the app,
//!   so listener names and addresses, and the `virtualOutbound`/
//!   `virtualInbound` filter-chain matching, differ.
//! - No Istio-only filters (metadata_exchange, istio_authn, istio.stats,
//!   grpc_stats, …): they are not in upstream Envoy; the wasm filter is
//!   first in the chain, before the router, which is where it runs relative
//!   to the router in istiod's chain too.
//! - Route configurations are inline (`route_config`), not RDS; the wasm
//!   filter is inline, not ECDS: same resources, delivered in the bootstrap.
//! - Outbound routes are istiod's default route for a VirtualService that
//!   sets neither timeout nor retries (ours): the mesh does not read
//!   VirtualServices.

use std::net::SocketAddr;

use harness::render::AppProtocol;
use serde_json::{Value, json};

use crate::destination_rule::{ClusterPolicy, Direction};

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn admin(addr: SocketAddr) -> Value {
    json!({"address": socket(addr)})
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

/// kube-proxy's view of a ClusterIP Service (`ports`: service address → pod
/// target port): a pod picked at random for each new *connection*, as
/// kube-proxy does in iptables/nftables mode (`statistic --mode random`).
pub fn l4_service(admin_addr: SocketAddr, ports: &[(SocketAddr, Vec<SocketAddr>)]) -> Value {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (service, pods) in ports {
        let cluster = format!("kube-service|{}", service.port());
        listeners.push(json!({
            "name": format!("service_{}", service.port()),
            "address": socket(*service),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": cluster,
                    "cluster": cluster,
                },
            }]}],
        }));
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|pod| json!({"endpoint": {"address": socket(*pod)}}))
            .collect();
        clusters.push(json!({
            "name": cluster,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "RANDOM",
            "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}]},
        }));
    }
    json!({
        "node": {"id": "kube-proxy", "cluster": "kube-proxy"},
        "admin": admin(admin_addr),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The outbound cluster name istiod gives `host:port`.
pub fn outbound_cluster_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// The client pod's sidecar: HCM on `listen` (the client dials it; in a pod,
/// iptables would redirect), the route istiod builds when the VirtualService
/// sets no timeout (none, and the client's `grpc-timeout` honoured) with
/// Istio's default retries, the wasm filter if the WasmPlugin selects the
/// client side, and the outbound cluster from `policy`.
#[allow(clippy::too_many_arguments)]
pub fn client_sidecar(
    pod_name: &str,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    host: &str,
    service_port: u16,
    policy: &ClusterPolicy,
    server_sidecars: &[SocketAddr],
    wasm: Option<Value>,
) -> Value {
    let cluster = outbound_cluster_name(service_port, host);
    let route = json!({
        "cluster": cluster,
        // istiod's "Infinity" (`route.go` setTimeout): no route timeout...
        "timeout": "0s",
        // ...and no cap on the client's own grpc-timeout.
        "max_grpc_timeout": "0s",
        "retry_policy": {
            // Istio's default policy (`retry.go` DefaultPolicy). It names
            // retriable-status-codes but lists no code: codes come only from
            // a VirtualService's retryOn (checked against istiod by the oracle).
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": 5,
        },
    });
    let mut http_filters: Vec<Value> = wasm.into_iter().collect();
    http_filters.push(router());
    json!({
        "node": {
            "id": format!("sidecar~{}~{pod_name}.default~default.svc.cluster.local", listen.ip()),
            "cluster": "client.default",
            "metadata": {"NAME": pod_name, "NAMESPACE": "default"},
        },
        "admin": admin(admin_addr),
        "static_resources": {
            "listeners": [{
                "name": format!("outbound_{service_port}"),
                "address": socket(listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("outbound_0.0.0.0_{service_port}"),
                        "codec_type": "AUTO",
                        // istiod turns Envoy's 5-minute default off.
                        "stream_idle_timeout": "0s",
                        "route_config": {
                            "name": service_port.to_string(),
                            "virtual_hosts": [{
                                "name": format!("{host}:{service_port}"),
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "route": route,
                                }],
                            }],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [policy.envoy_cluster(&cluster, Direction::Outbound, server_sidecars, true)],
        },
    })
}

/// The Envoy filter istiod + istio-agent produce for a WasmPlugin
/// (`../shared/docs/ISTIO-ENVOY.md` §1), with the module at `wasm_file`;
/// rendered by the harness, the one place that knows that shape.
pub fn wasm_filter(
    plugin: &crate::wasm_plugin::WasmPluginSpec,
    wasm_file: &std::path::Path,
) -> Value {
    plugin.envoy_plugin(wasm_file).http_filter()
}

/// The inbound cluster name istiod gives an app port.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// A server pod's sidecar, inbound side: HCM on `listen` with the wasm
/// filter (if any) before the router, the inbound route istiod builds (no
/// timeout, no retries, the client's grpc-timeout honoured), and the
/// `inbound|<port>||` cluster to the app with `policy` (the Sidecar's
/// inbound connection pool). HTTP/2 options on the HCM and the cluster only
/// for gRPC/HTTP2 ports, as istiod. Node metadata carries the pod name as
/// istio-agent sets it.
pub fn server_sidecar(
    pod_name: &str,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    app: SocketAddr,
    protocol: AppProtocol,
    policy: &ClusterPolicy,
    wasm: Option<Value>,
) -> Value {
    let cluster = inbound_cluster_name(app.port());
    let http2 = protocol == AppProtocol::Http2;
    let mut http_filters: Vec<Value> = wasm.into_iter().collect();
    http_filters.push(router());
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_".to_owned() + &app.port().to_string(),
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "route_config": {
            "name": cluster,
            "virtual_hosts": [{
                "name": format!("inbound|http|{}", app.port()),
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {
                    "cluster": cluster,
                    "timeout": "0s",
                    // istiod's default inbound route: no stream limit, and the
                    // client's grpc-timeout honoured, uncapped.
                    "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
                }}],
            }],
        },
        "http_filters": http_filters,
    });
    if http2 {
        hcm["http2_protocol_options"] = json!({});
    }
    json!({
        "node": {
            "id": format!("sidecar~{}~{pod_name}.default~default.svc.cluster.local", listen.ip()),
            "cluster": "server.default",
            "metadata": {"NAME": pod_name, "NAMESPACE": "default", "INSTANCE_IPS": listen.ip().to_string()},
        },
        "admin": admin(admin_addr),
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": socket(listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [policy.envoy_cluster(&cluster, Direction::Inbound, &[app], http2)],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm(config: &Value) -> &Value {
        &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn inbound_http2_options_only_on_grpc_ports() {
        let render = |protocol| {
            server_sidecar(
                "server-0",
                "127.0.0.1:15000".parse().unwrap(),
                "127.0.0.1:15006".parse().unwrap(),
                "127.0.0.1:30051".parse().unwrap(),
                protocol,
                &ClusterPolicy::default(),
                None,
            )
        };
        let grpc = render(AppProtocol::Http2);
        assert_eq!(hcm(&grpc)["http2_protocol_options"], json!({}));
        let http = render(AppProtocol::Http1);
        assert!(hcm(&http).get("http2_protocol_options").is_none());
        let options = &http["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"];
        assert!(options.get("http2_protocol_options").is_none(), "{options}");
        for config in [&grpc, &http] {
            assert_eq!(hcm(config)["stream_idle_timeout"], "0s");
        }
    }

    #[test]
    fn outbound_route_is_istiods_default_route() {
        let config = client_sidecar(
            "client-0",
            "127.0.0.1:15000".parse().unwrap(),
            "127.0.0.1:30051".parse().unwrap(),
            "server.default.svc.cluster.local",
            30051,
            &ClusterPolicy::default(),
            &["127.0.0.2:15006".parse().unwrap()],
            None,
        );
        let hcm = hcm(&config);
        assert_eq!(hcm["stream_idle_timeout"], "0s");
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(route["timeout"], "0s");
        assert_eq!(route["max_grpc_timeout"], "0s");
        assert_eq!(route["retry_policy"]["num_retries"], 2);
        assert_eq!(route["retry_policy"].get("retriable_status_codes"), None);
    }

    #[test]
    fn kube_proxy_stand_in_picks_at_random() {
        let pod: SocketAddr = "127.0.0.2:30051".parse().unwrap();
        let config = l4_service(
            "127.0.0.1:15000".parse().unwrap(),
            &[("127.0.0.1:30051".parse().unwrap(), vec![pod])],
        );
        assert_eq!(
            config["static_resources"]["clusters"][0]["lb_policy"],
            "RANDOM"
        );
    }
}
