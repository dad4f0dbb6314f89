//! The L4 "Service": kube-proxy's view of a ClusterIP Service, as an Envoy
//! bootstrap (`tcp_proxy`), for the scenarios without sidecars.

use std::net::SocketAddr;

use serde_json::{Value, json};
use sidecar::socket_address as socket;

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
        "admin": {"address": socket(admin_addr)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
