//! The client pod's sidecar, outbound side, as an Envoy bootstrap: the
//! listener for the Service port, istiod's default route (no
//! VirtualService timeout or retries: none, the client's `grpc-timeout`
//! honoured, Istio's default retry policy), the WasmPlugin's filter if it
//! selects the client side, and the `outbound|<port>||<host>` cluster with
//! the DestinationRule's policy.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    destination_rule::{ClusterPolicy, Direction},
    router, socket_address,
};

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
        "admin": {"address": socket_address(admin_addr)},
        "static_resources": {
            "listeners": [{
                "name": format!("outbound_{service_port}"),
                "address": socket_address(listen),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm(config: &Value) -> &Value {
        &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
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
}
