//! Endpoints by Envoy's own dynamic discovery (EDS), as istiod sends a
//! Service's pods: the cluster is `type: EDS` and its endpoints come from a
//! `ClusterLoadAssignment`. istiod pushes it over ADS; the local mesh has no
//! control plane, so the assignment is a file Envoy watches
//! (`path_config_source` + `watched_directory`): replacing the file (a
//! rename into the directory) is a push, and the running Envoy takes the new
//! endpoints without a restart, as it does from istiod.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::socket_address;

const ASSIGNMENT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The file in `dir` that holds `cluster`'s endpoints (cluster names carry
/// `|`, kept out of file names).
pub fn assignment_file(dir: &Path, cluster: &str) -> PathBuf {
    let stem: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{stem}.eds.json"))
}

/// Turns `cluster` (as [`crate::destination_rule::ClusterPolicy::envoy_cluster`]
/// or any STATIC cluster renders it) into an EDS cluster reading its
/// endpoints from [`assignment_file`]`(dir, name)`; the STATIC endpoints go.
pub fn from_file(mut cluster: Value, dir: &Path) -> Value {
    let name = cluster["name"].as_str().unwrap_or_default().to_owned();
    if let Some(map) = cluster.as_object_mut() {
        map.remove("load_assignment");
    }
    cluster["type"] = json!("EDS");
    cluster["eds_cluster_config"] = json!({
        "service_name": name,
        "eds_config": {
            "path_config_source": {
                "path": assignment_file(dir, &name),
                // Envoy reloads the file when one is moved into the folder.
                "watched_directory": {"path": dir},
            },
            "resource_api_version": "V3",
        },
    });
    cluster
}

/// The discovery response a file source holds: `cluster`'s endpoints, at
/// `version` (Envoy reports it as the cluster's version).
pub fn assignment(cluster: &str, endpoints: &[SocketAddr], version: u64) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|addr| json!({"endpoint": {"address": socket_address(*addr)}}))
        .collect();
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": ASSIGNMENT_TYPE,
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": lb_endpoints}],
        }],
    })
}

/// The hosts Envoy's admin `/clusters?format=json` lists for `cluster`, or
/// `None` when it has no such cluster.
pub fn hosts_in_admin(clusters: &Value, cluster: &str) -> Option<Vec<SocketAddr>> {
    let status = clusters["cluster_statuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?;
    let mut hosts: Vec<SocketAddr> = status["host_statuses"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| {
                    let socket = &h["address"]["socket_address"];
                    let ip = socket["address"].as_str()?.parse().ok()?;
                    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
                    Some(SocketAddr::new(ip, port))
                })
                .collect()
        })
        .unwrap_or_default();
    hosts.sort_unstable();
    Some(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_cluster_becomes_eds_from_its_file() {
        let cluster = json!({
            "name": "outbound|30051||server.default.svc.cluster.local",
            "type": "STATIC",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": "x", "endpoints": []},
        });
        let dir = Path::new("/tmp/eds");
        let eds = from_file(cluster, dir);
        assert_eq!(eds["type"], "EDS");
        assert_eq!(eds["lb_policy"], "ROUND_ROBIN");
        assert!(eds.get("load_assignment").is_none());
        let source = &eds["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(
            source["path"],
            "/tmp/eds/outbound_30051__server.default.svc.cluster.local.eds.json"
        );
        assert_eq!(source["watched_directory"]["path"], "/tmp/eds");
    }

    #[test]
    fn admin_hosts_are_read_back_sorted() {
        let addr: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let admin = json!({"cluster_statuses": [
            {"name": "other", "host_statuses": []},
            {"name": "c", "host_statuses": [
                {"address": {"socket_address": {"address": "127.0.0.3", "port_value": 1}}},
                {"address": {"socket_address": {"address": "127.0.0.2", "port_value": 1}}},
            ]},
        ]});
        let hosts = hosts_in_admin(&admin, "c").unwrap();
        assert_eq!(hosts, [addr, "127.0.0.3:1".parse().unwrap()]);
        assert_eq!(hosts_in_admin(&admin, "other"), Some(vec![]));
        assert_eq!(hosts_in_admin(&admin, "none"), None);
        let file = assignment("c", &[addr], 3);
        assert_eq!(file["version_info"], "3");
        assert_eq!(file["resources"][0]["cluster_name"], "c");
    }
}
