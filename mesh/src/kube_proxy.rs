//! The L4 "Service": kube-proxy's view of a ClusterIP Service, as an Envoy
//! bootstrap (`tcp_proxy`), for the scenarios without sidecars.

use std::{net::SocketAddr, path::Path};

use serde_json::{Value, json};
use sidecar::{eds, socket_address as socket};

/// The stand-in's cluster for one Service address.
pub fn cluster_name(service: SocketAddr) -> String {
    format!("kube-service|{}", service.port())
}

/// kube-proxy's view of a ClusterIP Service: a listener per Service address
/// in `services`, each forwarding to a pod picked at random for each new
/// *connection*, as kube-proxy does in iptables/nftables mode (`statistic
/// --mode random`). The pods come by EDS from `endpoints_dir` (the mesh
/// writes them as pods come and go, as the EndpointSlice controller does):
/// like kube-proxy's rules, an update steers new connections only; open
/// ones stay with their pod.
pub fn l4_service(admin_addr: SocketAddr, services: &[SocketAddr], endpoints_dir: &Path) -> Value {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for service in services {
        let cluster = cluster_name(*service);
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
        clusters.push(eds::from_file(
            json!({
                "name": cluster,
                "connect_timeout": "1s",
                "lb_policy": "RANDOM",
            }),
            endpoints_dir,
        ));
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
    fn kube_proxy_stand_in_picks_at_random_from_discovered_pods() {
        let service: SocketAddr = "127.0.0.1:30051".parse().unwrap();
        let config = l4_service(
            "127.0.0.1:15000".parse().unwrap(),
            &[service],
            Path::new("/tmp/eds"),
        );
        let cluster = &config["static_resources"]["clusters"][0];
        assert_eq!(cluster["lb_policy"], "RANDOM");
        assert_eq!(cluster["type"], "EDS");
        assert_eq!(cluster["name"], cluster_name(service));
    }
}
