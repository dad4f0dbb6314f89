//! Every scenario, run for real (server binaries, Envoy sidecars with the
//! real .wasm, the real clients) with few calls, must meet its expectation.
//! Each test uses its own loopback subnet so they can run in parallel.
//! Where pods come and go, the test also reads the expectation back from
//! the run's JSON (what `mesh run NAME --json` prints) on its own, so a
//! check that went soft would not pass unnoticed.

mod common;

use common::{options, subnet};
use mesh::{scenario, topology::Artifacts};
use serde_json::Value;
use sidecar::manifests;

fn scenario_passes(name: &str, subnet: u8) -> Value {
    let istio_dir = manifests::istio_dir(None);
    let plugin = scenario::preflight(&istio_dir).expect("our manifests load");
    let artifacts =
        Artifacts::locate(None, None).expect("artifacts (make envoy wasm; cargo build --bins)");
    let s = scenario::find(name).expect("known scenario");
    let outcome = scenario::run_scenario(s, &options(subnet), &artifacts, &istio_dir, &plugin)
        .expect("scenario runs");
    assert!(
        outcome.passed,
        "{name}: {:?}\nsummary: {:?}\nlogs: {}",
        outcome.problems, outcome.summary, outcome.logs
    );
    serde_json::to_value(&outcome).expect("the outcome serializes")
}

/// The pods that answered calls, from the JSON summary.
fn pods_called(run: &Value) -> Vec<&str> {
    run["summary"]["calls_per_pod"]
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The pod the first event of kind `what` acted on.
fn event_pod<'a>(run: &'a Value, what: &str) -> &'a str {
    run["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["what"] == what))
        .and_then(|e| e["pod"].as_str())
        .unwrap_or_else(|| panic!("no {what} event in {:#}", run["events"]))
}

/// When `pod` first served a call, from the timeline (ms, slice start).
fn first_served_ms(run: &Value, pod: &str) -> Option<u64> {
    let timeline = &run["timeline"];
    let slice = timeline["slice_ms"].as_u64()?;
    let row = timeline["rows"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == pod)?;
    let first = row["marks"].as_str()?.find('#')?;
    Some(first as u64 * slice)
}

fn slice_ms(run: &Value) -> u64 {
    run["timeline"]["slice_ms"].as_u64().unwrap()
}

/// When the first event of kind `what` began.
fn event_ms(run: &Value, what: &str) -> u64 {
    run["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["what"] == what))
        .and_then(|e| e["t_ms"].as_u64())
        .unwrap_or_else(|| panic!("no {what} event in {:#}", run["events"]))
}

/// The pod the `what` event took away serves nothing from half a second
/// after it on (room for a call in flight and a loaded machine).
fn silent_after(run: &Value, what: &str) {
    let pod = event_pod(run, what);
    let from = (event_ms(run, what) + 500) / slice_ms(run) + 1;
    let marks = marks(run, pod);
    let late = marks
        .chars()
        .skip(from as usize)
        .filter(|&c| c == '#')
        .count();
    assert_eq!(late, 0, "{pod} served calls after it was {what}: {marks}");
}

/// The timeline row's marks of `pod`.
fn marks<'a>(run: &'a Value, pod: &str) -> &'a str {
    run["timeline"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == pod)
        .and_then(|r| r["marks"].as_str())
        .unwrap_or_else(|| panic!("no timeline row for {pod}"))
}

/// The pod the `what` event acted on answered a call in the half second
/// after it (the call it struck, finishing there).
fn served_just_after(run: &Value, what: &str) {
    let pod = event_pod(run, what);
    let slice = slice_ms(run);
    let at = event_ms(run, what);
    let marks = marks(run, pod);
    let window: String = marks
        .chars()
        .skip((at / slice) as usize)
        .take((500 / slice + 1) as usize)
        .collect();
    assert!(
        window.contains('#'),
        "{pod} answered nothing in the 0.5 s after it was {what} at {at} ms: {marks}"
    );
}

fn errors(run: &Value) -> u64 {
    run["summary"]["errors"].as_u64().unwrap()
}

/// One test per scenario (its subnet from `common::SUBNETS`), and a check that the
/// catalog has no scenario without one.
macro_rules! scenario_tests {
    ($($test:ident: $name:literal $(, $json:expr)?;)+) => {
        $(
            #[test]
            fn $test() {
                let _run = scenario_passes($name, subnet($name));
                $( ($json)(&_run); )?
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
    http_client_via_l4_service_spreads_over_all_pods: "http-l4";
    grpc_client_via_l4_service_is_pinned_to_one_pod: "grpc-l4";
    grpc_client_via_sidecar_spreads_with_one_connection_per_pod: "grpc-mesh";
    one_request_per_connection_gives_fresh_connections: "one-per-conn";
    reuse_rule_rolls_connections_over_at_the_limit: "reuse";
    tight_pool_overflows_with_unavailable_and_keeps_going: "tight";
    client_side_round_robin_opens_one_connection_per_pod: "client-rr";
    scale_out_via_l4_stays_pinned: "scale-out-l4", |run: &Value| {
        let added = event_pod(run, "added");
        assert_eq!(pods_called(run).len(), 1, "{:#}", run["summary"]);
        assert!(!pods_called(run).contains(&added));
    };
    scale_out_via_sidecar_reaches_the_new_pod_at_once: "scale-out-mesh", |run: &Value| {
        let added = event_pod(run, "added");
        assert_eq!(pods_called(run).len(), 4, "{:#}", run["summary"]);
        let first = first_served_ms(run, added).expect("the added pod served");
        assert!(first + slice_ms(run) > event_ms(run, "added"), "served before it was added");
        assert_eq!(errors(run), 0);
    };
    scale_out_round_robin_reaches_the_new_pod_after_re_resolving: "scale-out-rr", |run: &Value| {
        let added = event_pod(run, "added");
        let first = first_served_ms(run, added).expect("the added pod served");
        // The first DNS answer with the 4th pod, after it was added.
        let learned = run["dns_answers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["addresses"] == 4 && a["t_ms"].as_u64() >= Some(event_ms(run, "added")))
            .and_then(|a| a["t_ms"].as_u64())
            .expect("a DNS answer listing the added pod");
        assert!(
            first + slice_ms(run) > learned,
            "served from {first} ms, before the client learned of it at {learned} ms"
        );
        assert_eq!(pods_called(run).len(), 4);
        assert_eq!(errors(run), 0);
    };
    scale_out_http_via_l4_reaches_the_new_pod: "scale-out-http", |run: &Value| {
        assert!(pods_called(run).contains(&event_pod(run, "added")));
        assert_eq!(errors(run), 0);
    };
    pod_loss_via_l4_fails_then_pins_to_another_pod: "pod-loss-l4", |run: &Value| {
        let killed = event_pod(run, "killed");
        silent_after(run, "killed");
        assert!(errors(run) >= 1, "{:#}", run["summary"]);
        assert!(run["failures"]["recovered_ms"].as_u64().is_some(), "{:#}", run["failures"]);
        let called = pods_called(run);
        assert_eq!(called.len(), 2, "the killed pod, then one other: {called:?}");
        assert!(called.contains(&killed));
    };
    pod_loss_via_sidecar_fails_at_most_the_call_in_flight: "pod-loss-mesh", |run: &Value| {
        assert!(errors(run) <= 1, "{:#}", run["summary"]);
        assert_eq!(pods_called(run).len(), 3);
        silent_after(run, "killed");
    };
    drain_via_sidecar_fails_no_call: "drain-mesh", |run: &Value| {
        assert_eq!(errors(run), 0, "{:#}", run["summary"]);
        assert_eq!(pods_called(run).len(), 3);
        served_just_after(run, "drained");
        silent_after(run, "drained");
    };
    max_connection_age_spreads_calls_via_l4: "max-age-l4", |run: &Value| {
        assert_eq!(errors(run), 0, "{:#}", run["summary"]);
        assert!(run["summary"]["connections"].as_u64().unwrap() >= 4);
        assert!(pods_called(run).len() >= 2);
    };
    http_via_sidecar_reuses_app_connections: "http-mesh", |run: &Value| {
        let summary = &run["summary"];
        assert_eq!(pods_called(run).len(), 3, "{summary:#}");
        assert!(summary["max_requests_per_connection"].as_u64().unwrap() > 1, "{summary:#}");
        let connections = summary["connections"].as_u64().unwrap();
        assert!(connections < summary["ok"].as_u64().unwrap(), "{summary:#}");
    };
    node_loss_via_sidecar_hangs_calls_until_the_deadline: "node-loss-mesh", |run: &Value| {
        let summary = &run["summary"];
        assert!(errors(run) >= 1, "{summary:#}");
        // The client's deadline, or its sidecar's timer set from the call's
        // grpc-timeout header: whichever fired first.
        let codes = summary["errors_by_code"].as_object().unwrap();
        assert!(
            codes.keys().all(|c| c == "DEADLINE_EXCEEDED" || c == "UNAVAILABLE"),
            "{summary:#}"
        );
        // Nothing was reset or refused: the sidecar retried nothing.
        assert_eq!(run["sidecar_retries"]["retried"], 0, "{:#}", run["sidecar_retries"]);
        silent_after(run, "frozen");
    };
    node_loss_via_l4_is_left_by_keepalive_before_the_deadline: "node-loss-l4", |run: &Value| {
        let summary = &run["summary"];
        assert!(errors(run) >= 1, "{summary:#}");
        assert!(summary["errors_by_code"].get("DEADLINE_EXCEEDED").is_none(), "{summary:#}");
        assert!(run["failures"]["recovered_ms"].as_u64().is_some(), "{:#}", run["failures"]);
        let called = pods_called(run);
        // The lost pod, then another (normally one: a PING starved on a busy
        // machine may move the client once more).
        assert!(called.len() >= 2, "the lost pod, then another: {called:?}");
        assert!(called.contains(&event_pod(run, "frozen")));
        silent_after(run, "frozen");
    };
}
