//! `mesh render`: the local mesh's own rendering of one experiment, as JSON
//! in the shape the Istio oracle (`tools/istio-oracle`) writes istiod's in,
//! so the two compare field by field. The resources are taken from the
//! bootstraps `Mesh::start` runs (`topology::sidecar_configs`, rendered by
//! the `sidecar` crate), unchanged.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

use sidecar::{inbound, manifests, outbound};

use crate::topology::{self, Addresses, GRPC_PORT, HTTP_PORT, SERVICE_HOST, SERVICE_HTTP_PORT};

/// The demo's pod network and name seed: a render names the same addresses
/// a default `mesh demo` uses.
const SUBNET: u8 = 10;
const SEED: u64 = 42;

/// The rendering of `experiment` (`none` or a DestinationRule file name in
/// `istio_dir/destinationrules/`) with `pods` server pods; notes (such as a
/// missing Sidecar file) go to `notes`.
pub fn render(
    istio_dir: &Path,
    experiment: &str,
    pods: usize,
    notes: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let plugin = manifests::wasm_plugin(istio_dir)?;
    let (policies, experiment_notes) = manifests::experiment(istio_dir, experiment)?;
    notes.extend(experiment_notes);
    notes.extend(plugin.warnings.iter().map(|w| format!("WasmPlugin: {w}")));
    let addrs = Addresses {
        subnet: SUBNET,
        pods,
    };
    let pod_names = topology::pod_names("server", pods, SEED);
    let client_pod = topology::pod_names("client-grpc", 1, SEED.rotate_left(17)).remove(0);
    // Where the demo loads the module from; not compared (istio-agent picks
    // its own path), and it need not be built to render.
    let wasm_file = harness::paths::workspace_root().join("dist/upstream_tagger.wasm");
    let configs = topology::sidecar_configs(
        addrs,
        &pod_names,
        &client_pod,
        &policies,
        &plugin,
        &wasm_file,
        // Where a demo run's endpoint files would be; the oracle skips
        // where endpoints come from (EDS over ADS from istiod).
        &harness::paths::target_dir().join("mesh/endpoints"),
    );
    let server = configs
        .servers
        .first()
        .context("--pods must be at least 1")?;
    let outbound =
        [GRPC_PORT, SERVICE_HTTP_PORT].map(|p| outbound::outbound_cluster_name(p, SERVICE_HOST));
    let inbound = [GRPC_PORT, HTTP_PORT].map(inbound::inbound_cluster_name);
    Ok(json!({
        "experiment": experiment,
        "source": "mesh",
        "client": {
            "listeners": resources(&configs.client, "listeners", |_| true),
            // Our HCMs carry route_config inline: no RDS resources.
            "routes": [],
            "clusters": resources(&configs.client, "clusters", |name| outbound.iter().any(|o| o == name)),
        },
        "server": {
            "listeners": resources(server, "listeners", |_| true),
            "routes": [],
            "clusters": resources(server, "clusters", |name| inbound.iter().any(|i| i == name)),
            // The wasm filter is inline in the HCM: no ECDS resources.
            "extension_configs": [],
        },
    }))
}

/// `static_resources.<kind>` of a bootstrap whose name passes `keep`.
fn resources(bootstrap: &Value, kind: &str, keep: impl Fn(&str) -> bool) -> Vec<Value> {
    bootstrap["static_resources"][kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str().is_some_and(&keep))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_takes_the_resources_the_mesh_runs() {
        let dir = manifests::istio_dir(None);
        let mut notes = Vec::new();
        let out = render(&dir, "reuse", 3, &mut notes).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(out["experiment"], "reuse");
        assert_eq!(out["source"], "mesh");
        let cluster = &out["client"]["clusters"][0];
        assert_eq!(
            cluster["name"],
            "outbound|30051||server.default.svc.cluster.local"
        );
        assert_eq!(cluster["lb_policy"], "ROUND_ROBIN");
        // Endpoints by EDS, as from istiod (from a watched file here).
        assert_eq!(cluster["type"], "EDS");
        assert_eq!(
            cluster["eds_cluster_config"]["service_name"],
            cluster["name"]
        );
        let server_cluster = &out["server"]["clusters"][0];
        assert_eq!(server_cluster["name"], "inbound|30051||");
        // From istio/sidecar.yaml, not from the reuse DestinationRule.
        assert_eq!(
            server_cluster["circuit_breakers"]["thresholds"][0]["max_requests"],
            4_294_967_295u64
        );
        let hcm = &out["server"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["http_filters"][0]["typed_config"]["config"]["root_id"],
            "upstream-tagger"
        );
        // The WasmPlugin says SERVER: the client sidecar has only the router.
        let client_hcm =
            &out["client"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(client_hcm["http_filters"].as_array().map(Vec::len), Some(1));
        for side in ["client", "server"] {
            assert_eq!(out[side]["routes"], json!([]), "{side}");
            // The gRPC port and the HTTP port (Service 80, app 8080).
            assert_eq!(out[side]["listeners"].as_array().map(Vec::len), Some(2));
            assert_eq!(out[side]["clusters"].as_array().map(Vec::len), Some(2));
        }
        assert_eq!(out["server"]["extension_configs"], json!([]));
    }
}
