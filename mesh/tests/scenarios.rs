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

/// One test per scenario (name, its loopback subnet), and a check that the
/// catalog has no scenario without one.
macro_rules! scenario_tests {
    ($($test:ident: $name:literal, $subnet:literal;)+) => {
        $(
            #[test]
            fn $test() {
                scenario_passes($name, $subnet);
            }
        )+

        #[test]
        fn every_scenario_in_the_catalog_has_a_test() {
            let tested = [$($name),+];
            let untested: Vec<_> = scenario::SCENARIOS
                .iter()
                .map(|s| s.name)
                .filter(|name| !tested.contains(name))
                .collect();
            assert!(untested.is_empty(), "scenarios without a test: {untested:?}");
        }
    };
}

scenario_tests! {
    http_client_via_l4_service_spreads_over_all_pods: "http-l4", 101;
    grpc_client_via_l4_service_is_pinned_to_one_pod: "grpc-l4", 102;
    grpc_client_via_sidecar_spreads_with_one_connection_per_pod: "grpc-mesh", 103;
    one_request_per_connection_gives_fresh_connections: "one-per-conn", 104;
    reuse_rule_rolls_connections_over_at_the_limit: "reuse", 105;
    tight_pool_overflows_with_unavailable_and_keeps_going: "tight", 106;
    client_side_round_robin_opens_one_connection_per_pod: "client-rr", 107;
    scale_out_via_l4_stays_pinned: "scale-out-l4", 111;
    scale_out_via_sidecar_reaches_the_new_pod_at_once: "scale-out-mesh", 112;
    scale_out_round_robin_reaches_the_new_pod_after_re_resolving: "scale-out-rr", 117;
    scale_out_http_via_l4_reaches_the_new_pod: "scale-out-http", 113;
    pod_loss_via_l4_fails_then_pins_to_another_pod: "pod-loss-l4", 114;
    pod_loss_via_sidecar_fails_at_most_the_call_in_flight: "pod-loss-mesh", 115;
    drain_via_sidecar_fails_no_call: "drain-mesh", 116;
    max_connection_age_spreads_calls_via_l4: "max-age-l4", 118;
    http_via_sidecar_reuses_app_connections: "http-mesh", 119;
}
