//! The scenarios `mesh list` shows and `mesh demo` runs, in order.

use std::time::Duration;

use super::{
    Action,
    Binary::{ClientGrpc, ClientHttp},
    Calls, Client,
    ClientPath::{HeadlessDns, L4Service, PodAddresses, Sidecar},
    Event, Pods, Scenario, Which, check,
};

/// A 4th pod added 1 s into the run (`scale-out-*`).
const SCALE_OUT: &[Event] = &[Event {
    at: Duration::from_secs(1),
    action: Action::AddPod,
}];

/// The pod serving the client killed 1 s in; the endpoints catch up a
/// second later (`pod-loss-*`).
const POD_LOSS: &[Event] = &[
    Event {
        at: Duration::from_secs(1),
        action: Action::Kill(Which::Serving),
    },
    Event {
        at: Duration::from_secs(2),
        action: Action::Publish,
    },
];

/// The node of the pod with the call in flight lost 1 s in; the endpoints
/// catch up 2 s later (`node-loss-mesh`; on a cluster, the node controller
/// takes 40 s and more to mark a silent node).
const NODE_LOSS: &[Event] = &[
    Event {
        at: Duration::from_secs(1),
        action: Action::Freeze(Which::InFlight),
    },
    Event {
        at: Duration::from_secs(3),
        action: Action::Publish,
    },
];

/// [`NODE_LOSS`] where the client's one connection is: its pinned pod
/// (`node-loss-l4`).
const NODE_LOSS_PINNED: &[Event] = &[
    Event {
        at: Duration::from_secs(1),
        action: Action::Freeze(Which::Serving),
    },
    NODE_LOSS[1],
];

/// gRPC calls back to back, each held 100 ms: a call is always in flight,
/// as under load, when a pod dies or drains.
const CALLS_ALWAYS_IN_FLIGHT: Client = Client {
    binary: ClientGrpc,
    args: &["--host", "{target}", "--delay", "100ms"],
    calls: Calls::AtLeast(30),
    interval: "0",
};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        number: 1,
        name: "http-l4",
        title: "HTTP client (no keep-alive) via the L4 Service (kube-proxy)",
        path: L4Service,
        pods: Pods::Flag,
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientHttp,
            args: &["--url", "http://{target}/pod"],
            // kube-proxy picks at random: enough calls that reaching a
            // single pod would be a bug, not bad luck (3 pods: 3^-29).
            calls: Calls::AtLeast(30),
            interval: "0",
        },
        events: &[],
        expected: "a new connection per call, each sent to a pod kube-proxy picks at random, so calls spread over the pods (not evenly)",
        check: check::spread_over_fresh_connections,
    },
    Scenario {
        number: 2,
        name: "grpc-l4",
        title: "gRPC client via the L4 Service (kube-proxy)",
        path: L4Service,
        pods: Pods::Flag,
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            calls: Calls::Flag,
            interval: "0",
        },
        events: &[],
        expected: "one HTTP/2 connection, balanced once: every call lands on the same pod (the problem)",
        check: check::pinned_to_one_pod,
    },
    Scenario {
        number: 3,
        name: "grpc-mesh",
        title: "gRPC client via its sidecar (Istio defaults, no DestinationRule)",
        path: Sidecar,
        pods: Pods::Flag,
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            // Istio's default LEAST_REQUEST picks at random among idle pods:
            // with too few calls a pod could be missed by chance.
            calls: Calls::AtLeast(30),
            interval: "0",
        },
        events: &[],
        expected: "the sidecar balances each request: calls spread over every pod, on one long-lived connection per pod whose request count grows",
        check: check::one_growing_connection_per_pod,
    },
    Scenario {
        number: 4,
        name: "one-per-conn",
        title: "DestinationRule one-per-conn (maxRequestsPerConnection: 1)",
        path: Sidecar,
        pods: Pods::Flag,
        destination_rule: Some("one-per-conn"),
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            calls: Calls::Flag,
            interval: "0",
        },
        events: &[],
        expected: "every response says request 1, each on a fresh connection id",
        check: check::every_answer_is_request_one,
    },
    Scenario {
        number: 5,
        name: "reuse",
        title: "DestinationRule reuse (ROUND_ROBIN, maxRequestsPerConnection: 100)",
        path: Sidecar,
        pods: Pods::Flag,
        destination_rule: Some("reuse"),
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            calls: Calls::PastConnectionLimit,
            interval: "0",
        },
        events: &[],
        expected: "pods rotate call by call; each connection's count climbs to 100, then a new connection starts again at 1",
        check: check::connections_roll_over_at_the_limit,
    },
    Scenario {
        number: 6,
        name: "tight",
        title: "DestinationRule tight (1 connection, 1 pending, 1 request) with 4 concurrent callers",
        path: Sidecar,
        pods: Pods::Flag,
        destination_rule: Some("tight"),
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &[
                "--host",
                "{target}",
                "--concurrency",
                "4",
                "--delay",
                "100ms",
            ],
            calls: Calls::AtLeast(24),
            interval: "100ms",
        },
        events: &[],
        expected: "calls beyond the one allowed in flight fail fast with UNAVAILABLE (overflow); the client reports them and keeps going",
        check: check::failures_are_overflow,
    },
    Scenario {
        number: 7,
        name: "client-rr",
        title: "client-side round robin over the pod addresses (headless Service), no sidecar",
        path: PodAddresses,
        pods: Pods::Flag,
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--mode", "round-robin", "--host", "{target}"],
            calls: Calls::Flag,
            interval: "0",
        },
        events: &[],
        expected: "the client opens one connection per pod and rotates calls over them",
        check: check::one_reused_connection_per_pod,
    },
    Scenario {
        number: 8,
        name: "scale-out-l4",
        title: "scale-out: gRPC client via the L4 Service, a 4th pod added during the run",
        path: L4Service,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            calls: Calls::AtLeast(60),
            interval: "50ms",
        },
        events: SCALE_OUT,
        expected: "no call reaches the new pod: the one connection stays pinned to its pod (kube-proxy balances connections, not calls)",
        check: check::pinned_through_the_scale_out,
    },
    Scenario {
        number: 9,
        name: "scale-out-mesh",
        title: "scale-out: gRPC client via its sidecar, a 4th pod added during the run",
        path: Sidecar,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            // Starting a pod with its sidecar takes up to a second or two on
            // a busy machine: enough calls after it to judge the next 30.
            calls: Calls::AtLeast(100),
            interval: "50ms",
        },
        events: SCALE_OUT,
        expected: "the sidecar gets the new endpoint by EDS and sends it calls at once (within the first 30 calls started after it is published); no call fails",
        check: check::added_pod_gets_calls_at_once,
    },
    Scenario {
        number: 10,
        name: "scale-out-rr",
        title: "scale-out: client-side round robin over the headless Service's DNS, a 4th pod added during the run",
        path: HeadlessDns,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientGrpc,
            args: &[
                "--mode",
                "round-robin",
                "--host",
                "{target}",
                "--dns-server",
                "{dns}",
                "--resolve-every",
                "2s",
            ],
            // The client re-resolves up to 2 s after the pod is published:
            // a second and more of calls after that.
            calls: Calls::AtLeast(100),
            interval: "50ms",
        },
        events: SCALE_OUT,
        expected: "the DNS answer lists the new pod at once, but the client asks again only every --resolve-every (2s): the new pod gets calls after that re-resolution, not before",
        check: check::added_pod_after_the_next_resolution,
    },
    Scenario {
        number: 11,
        name: "scale-out-http",
        title: "scale-out: HTTP client (no keep-alive) via the L4 Service, a 4th pod added during the run",
        path: L4Service,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientHttp,
            args: &["--url", "http://{target}/pod"],
            calls: Calls::AtLeast(60),
            interval: "50ms",
        },
        events: SCALE_OUT,
        expected: "a new connection per call, so kube-proxy's picks include the new pod at once",
        check: check::added_pod_gets_new_connections,
    },
    Scenario {
        number: 12,
        name: "pod-loss-l4",
        title: "pod loss: gRPC client via the L4 Service, the pod it is pinned to is killed",
        path: L4Service,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: CALLS_ALWAYS_IN_FLIGHT,
        events: POD_LOSS,
        expected: "the call in flight fails (UNAVAILABLE); the client reconnects through kube-proxy, and until the endpoints drop the dead pod, a reconnect kube-proxy still sends there may fail too; then it is pinned again, to another pod; the failure line says how many calls failed and for how long",
        check: check::reconnects_to_another_pod,
    },
    Scenario {
        number: 13,
        name: "pod-loss-mesh",
        title: "pod loss: gRPC client via its sidecar, a pod it calls is killed",
        path: Sidecar,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: CALLS_ALWAYS_IN_FLIGHT,
        events: POD_LOSS,
        expected: "at most the call in flight on the killed pod fails; until the endpoints drop it, connect failures to it are retried on other pods (Istio's default retries)",
        check: check::retries_hide_the_pod_loss,
    },
    Scenario {
        number: 14,
        name: "drain-mesh",
        title: "graceful drain: gRPC client via its sidecar, a pod it calls gets SIGTERM",
        path: Sidecar,
        pods: Pods::Exactly(3),
        destination_rule: None,
        // NOT_SERVING while the endpoint update spreads, as in Kubernetes.
        server_args: &["--drain-grace", "2s"],
        client: CALLS_ALWAYS_IN_FLIGHT,
        events: &[Event {
            at: Duration::from_secs(1),
            action: Action::Drain(Which::InFlight),
        }],
        expected: "no call fails: the call in flight on the draining pod finishes there, and once the endpoints drop it (it is NOT_SERVING) it takes no new call",
        check: check::drains_without_failures,
    },
    Scenario {
        number: 15,
        name: "max-age-l4",
        title: "gRPC client via the L4 Service, servers with --max-connection-age 300ms",
        path: L4Service,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &["--max-connection-age", "300ms"],
        client: Client {
            binary: ClientGrpc,
            args: &["--host", "{target}"],
            calls: Calls::AtLeast(60),
            interval: "50ms",
        },
        events: &[],
        expected: "every 300ms the server sends GOAWAY, the client finishes its call and reconnects; each new connection gets kube-proxy's pick, so calls spread over the pods with no failed call",
        check: check::reconnects_every_age,
    },
    Scenario {
        number: 16,
        name: "http-mesh",
        title: "HTTP client (no keep-alive) via its sidecar",
        path: Sidecar,
        pods: Pods::Flag,
        destination_rule: None,
        server_args: &[],
        client: Client {
            binary: ClientHttp,
            // `/` answers with the caller the app saw (its peer): the
            // server sidecar's connection, not the client's.
            args: &["--url", "http://{target}/"],
            calls: Calls::AtLeast(30),
            interval: "0",
        },
        events: &[],
        expected: "the sidecar balances each request over every pod; the client opens a connection per call, yet the apps see the sidecars' few reused connections (their conn-requests climbs)",
        check: check::sidecars_reuse_app_connections,
    },
    Scenario {
        number: 17,
        name: "node-loss-mesh",
        title: "node loss: gRPC client via its sidecar, a pod it calls stops answering (no reset)",
        path: Sidecar,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            // CALLS_ALWAYS_IN_FLIGHT, with a deadline short enough to see
            // several calls hang before the endpoints catch up.
            args: &["--host", "{target}", "--delay", "100ms", "--timeout", "1s"],
            calls: Calls::AtLeast(40),
            ..CALLS_ALWAYS_IN_FLIGHT
        },
        events: NODE_LOSS,
        expected: "the call in flight on the lost pod hangs until its 1 s deadline: the client gives up (DEADLINE_EXCEEDED), or its sidecar does first (UNAVAILABLE upstream request timeout: Istio's routes honor the call's grpc-timeout); until the endpoints drop the pod the sidecar may pick it again, and those calls hang too: nothing resets a connection, so Istio's default retries never fire; no call started after the endpoints update fails",
        check: check::calls_to_a_lost_pod_hang_until_the_deadline,
    },
    Scenario {
        number: 18,
        name: "node-loss-l4",
        title: "node loss: gRPC client with keepalive via the L4 Service, the pod it is pinned to stops answering (no reset)",
        path: L4Service,
        pods: Pods::Exactly(3),
        destination_rule: None,
        server_args: &[],
        client: Client {
            args: &[
                "--host",
                "{target}",
                "--delay",
                "100ms",
                "--timeout",
                "1s",
                "--keepalive-time",
                "200ms",
                "--keepalive-timeout",
                "200ms",
            ],
            calls: Calls::AtLeast(40),
            ..CALLS_ALWAYS_IN_FLIGHT
        },
        events: NODE_LOSS_PINNED,
        expected: "the connection to the lost pod goes silent; the client's keepalive (a PING every 200 ms, 200 ms to answer) closes it well before the 1 s deadline, failing the call in flight, and the client reconnects through kube-proxy, which may pick the lost pod again until the endpoints drop it; then it is pinned to another pod. Without keepalive (gRPC's default) every later call would wait out its deadline on the dead connection",
        check: check::keepalive_leaves_the_lost_pod,
    },
];

/// A scenario by name or number.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS
        .iter()
        .find(|s| s.name == name || s.number.to_string() == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sidecar::manifests;

    use super::*;
    use crate::scenario::ClientPath;

    #[test]
    fn scenarios_are_numbered_in_order_with_distinct_names() {
        for (s, number) in SCENARIOS.iter().zip(1..) {
            assert_eq!(s.number, number, "{}", s.name);
            assert_eq!(find(s.name).map(|f| f.number), Some(number));
            assert_eq!(find(&number.to_string()).map(|f| f.name), Some(s.name));
        }
        let names: BTreeSet<_> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SCENARIOS.len());
        assert!(find("nope").is_none());
    }

    #[test]
    fn destination_rules_are_ours_and_only_where_a_sidecar_applies_them() {
        let ours = manifests::experiments(&manifests::istio_dir(None));
        for s in SCENARIOS {
            if let Some(rule) = s.destination_rule {
                assert_eq!(s.path, ClientPath::Sidecar, "{}", s.name);
                assert!(ours.iter().any(|o| o == rule), "{}: {rule}", s.name);
            }
        }
    }

    #[test]
    fn round_robin_re_resolves_as_its_check_expects() {
        let rr = find("scale-out-rr").unwrap();
        let every = rr
            .client
            .args
            .windows(2)
            .find(|w| w[0] == "--resolve-every")
            .map(|w| w[1]);
        assert_eq!(every, Some("2s"));
        assert_eq!(check::RR_RESOLVE_EVERY, Duration::from_secs(2));
    }

    #[test]
    fn every_client_says_where_it_dials() {
        for s in SCENARIOS {
            assert!(
                s.client.args.iter().any(|a| a.contains("{target}")),
                "{}",
                s.name
            );
        }
    }
}
