//! Every scenario, run for real (server binaries, Envoy sidecars with the
//! real .wasm, the real clients) with few calls, must meet its expectation.
//! Each test uses its own loopback subnet so they can run in parallel.

use mesh::{
    scenario::{self, Options},
    topology::Artifacts,
};
use sidecar::manifests;

fn scenario_passes(name: &str, subnet: u8) {
    let istio_dir = manifests::istio_dir(None);
    let plugin = scenario::preflight(&istio_dir).expect("our manifests load");
    let artifacts =
        Artifacts::locate(None, None).expect("artifacts (make envoy wasm; cargo build --bins)");
    let options = Options {
        calls: 9,
        pods: 3,
        subnet,
        all_lines: false,
        quiet: true,
        seed: 7,
    };
    let s = scenario::find(name).expect("known scenario");
    let outcome = scenario::run_scenario(s, &options, &artifacts, &istio_dir, &plugin)
        .expect("scenario runs");
    assert!(
        outcome.passed,
        "{name}: {:?}\nsummary: {:?}\nlogs: {}",
        outcome.problems, outcome.summary, outcome.logs
    );
}

#[test]
fn http_client_via_l4_service_spreads_over_all_pods() {
    scenario_passes("http-l4", 101);
}

#[test]
fn grpc_client_via_l4_service_is_pinned_to_one_pod() {
    scenario_passes("grpc-l4", 102);
}

#[test]
fn grpc_client_via_sidecar_spreads_with_one_connection_per_pod() {
    scenario_passes("grpc-mesh", 103);
}

#[test]
fn one_request_per_connection_gives_fresh_connections() {
    scenario_passes("one-per-conn", 104);
}

#[test]
fn reuse_rule_rolls_connections_over_at_the_limit() {
    scenario_passes("reuse", 105);
}

#[test]
fn tight_pool_overflows_with_unavailable_and_keeps_going() {
    scenario_passes("tight", 106);
}

#[test]
fn client_side_round_robin_opens_one_connection_per_pod() {
    scenario_passes("client-rr", 107);
}
