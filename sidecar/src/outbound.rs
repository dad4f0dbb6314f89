//! The client pod's sidecar, outbound side, as an Envoy bootstrap: a
//! listener per Service port, istiod's default route (no
//! VirtualService timeout or retries: none, the client's `grpc-timeout`
//! honoured, Istio's default retry policy), the WasmPlugin's filter if it
//! selects the client side, and the `outbound|<port>||<host>` cluster with
//! the DestinationRule's policy.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    AppProtocol,
    destination_rule::{ClusterPolicy, Direction},
    router, socket_address,
};

/// The outbound cluster name istiod gives `host:port`.
pub fn outbound_cluster_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// One Service port the client pod's sidecar serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPort {
    /// Where the client app dials it (in a pod, iptables would redirect
    /// `<Service IP>:<port>` here).
    pub listen: SocketAddr,
    /// The Service port (names the listener, the route and the cluster).
    pub service_port: u16,
    /// How the sidecar talks to the server pods' sidecars on it.
    pub protocol: AppProtocol,
    /// The server pods' sidecars (STATIC; the mesh turns the cluster into
    /// EDS, see [`crate::eds`]).
    pub endpoints: Vec<SocketAddr>,
    /// Whether the WasmPlugin's filter runs on it (its `match` selects the
    /// client side and this port).
    pub wasm: bool,
}

/// The client pod's sidecar: per Service port an HCM on its `listen`
/// address with the route istiod builds when the VirtualService sets no
/// timeout (none, and the client's `grpc-timeout` honoured) with Istio's
/// default retries, the WasmPlugin's filter `wasm` on the ports it
/// selects, and the `outbound|<port>||<host>` cluster with `policy`.
pub fn client_sidecar(
    pod_name: &str,
    admin_addr: SocketAddr,
    host: &str,
    ports: &[OutboundPort],
    policy: &ClusterPolicy,
    wasm: Option<Value>,
) -> Value {
    let listeners: Vec<Value> = ports
        .iter()
        .map(|port| listener(host, port, wasm.clone().filter(|_| port.wasm)))
        .collect();
    let clusters: Vec<Value> = ports
        .iter()
        .map(|port| {
            policy.envoy_cluster(
                &outbound_cluster_name(port.service_port, host),
                Direction::Outbound,
                &port.endpoints,
                port.protocol == AppProtocol::Http2,
            )
        })
        .collect();
    let node_ip = ports
        .first()
        .map(|p| p.listen.ip().to_string())
        .unwrap_or_default();
    json!({
        "node": {
            "id": format!("sidecar~{node_ip}~{pod_name}.default~default.svc.cluster.local"),
            "cluster": "client.default",
            "metadata": {"NAME": pod_name, "NAMESPACE": "default"},
        },
        "admin": {"address": socket_address(admin_addr)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The listener istiod gives one Service port (`0.0.0.0_<port>`, its HCM
/// and route).
fn listener(host: &str, port: &OutboundPort, wasm: Option<Value>) -> Value {
    let service_port = port.service_port;
    let cluster = outbound_cluster_name(service_port, host);
    let route = json!({
        "cluster": cluster,
        // istiod's "Infinity" (`route.go` setTimeout): no route timeout...
        "timeout": "0s",
        // ...and no cap on the client's own grpc-timeout (on every HTTP
        // port: istiod does not tell gRPC from HTTP here).
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
        "name": format!("outbound_{service_port}"),
        "address": socket_address(port.listen),
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
            "server.default.svc.cluster.local",
            &[OutboundPort {
                listen: "127.0.0.1:30051".parse().unwrap(),
                service_port: 30051,
                protocol: AppProtocol::Http2,
                endpoints: vec!["127.0.0.2:15006".parse().unwrap()],
                wasm: false,
            }],
            &ClusterPolicy::default(),
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
