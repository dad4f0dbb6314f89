//! Envoy bootstraps for the parts of the local mesh that are not the server
//! sidecar: the L4 "Service" (kube-proxy) and the client sidecar (outbound).

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::destination_rule::ClusterPolicy;

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn admin(addr: SocketAddr) -> Value {
    json!({"address": socket(addr)})
}

/// kube-proxy's view of a ClusterIP Service: per *connection* round robin over
/// the pods (`ports`: service address → pod target port).
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
            "lb_policy": "ROUND_ROBIN",
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
/// iptables would redirect), route as istiod builds for gRPC (no timeout,
/// Istio's default retries), and the outbound cluster from `policy`.
pub fn client_sidecar(
    pod_name: &str,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    host: &str,
    service_port: u16,
    policy: &ClusterPolicy,
    server_sidecars: &[SocketAddr],
) -> Value {
    let cluster = outbound_cluster_name(service_port, host);
    let route = json!({
        "cluster": cluster,
        "timeout": "0s",
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": 5,
        },
    });
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
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [policy.envoy_cluster(&cluster, server_sidecars, true)],
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

/// A server pod's sidecar, inbound side: h2 HCM on `listen` with the wasm
/// filter (if any) before the router, no route timeout and no retries (as
/// istiod does for gRPC), and the `inbound|<port>||` h2 cluster to the app.
/// Node metadata carries the pod name as istio-agent sets it.
#[allow(clippy::too_many_arguments)]
pub fn server_sidecar(
    pod_name: &str,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    app: SocketAddr,
    policy: &ClusterPolicy,
    wasm: Option<Value>,
) -> Value {
    let cluster = inbound_cluster_name(app.port());
    let mut http_filters: Vec<Value> = wasm.into_iter().collect();
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
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
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound_0.0.0.0_".to_owned() + &app.port().to_string(),
                        "codec_type": "AUTO",
                        "http2_protocol_options": {},
                        "route_config": {
                            "name": cluster,
                            "virtual_hosts": [{
                                "name": format!("inbound|http|{}", app.port()),
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
                            }],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [policy.envoy_cluster(&cluster, &[app], true)],
        },
    })
}
