//! Every config the local mesh renders is accepted by the real Envoy
//! (`--mode validate`), and broken inputs give one clear error.

mod common;

use std::net::SocketAddr;

use mesh::{
    kube_proxy,
    topology::{self, Addresses, Artifacts, Layout, Mesh},
};
use sidecar::{
    SidecarPolicies,
    destination_rule::{ClusterPolicy, Direction},
    manifests,
    wasm_plugin::{Side, WasmPluginSpec},
};

/// `envoy --mode validate` through the harness; panics with Envoy's words.
fn assert_valid(label: &str, config: &serde_json::Value) {
    if let Err(rejection) = harness::envoy::Envoy::validate(label, config).expect("run envoy") {
        panic!("Envoy rejects {label}:\n{rejection}");
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A folder with an endpoint file for each of `clusters` (one pod each):
/// Envoy validates that an EDS file source exists.
fn endpoints_dir(label: &str, clusters: &[String]) -> std::path::PathBuf {
    let dir = harness::paths::target_dir()
        .join("mesh-test-endpoints")
        .join(label);
    std::fs::create_dir_all(&dir).unwrap();
    for cluster in clusters {
        let file = sidecar::eds::assignment_file(&dir, cluster);
        let body = sidecar::eds::assignment(cluster, &[addr("127.0.0.2:15006")], 1);
        std::fs::write(file, body.to_string()).unwrap();
    }
    dir
}

fn outbound_clusters() -> Vec<String> {
    [30051, 80]
        .map(|port| sidecar::outbound::outbound_cluster_name(port, topology::SERVICE_HOST))
        .to_vec()
}

fn our_plugin() -> WasmPluginSpec {
    manifests::wasm_plugin(&manifests::istio_dir(None)).unwrap()
}

/// Every sidecar the mesh would run for `policies` and `plugin` (the same
/// function `Mesh::start` and `mesh render` use) passes `envoy --mode validate`.
fn assert_sidecars_valid(name: &str, policies: &SidecarPolicies, plugin: &WasmPluginSpec) {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let addrs = Addresses {
        subnet: 10,
        pods: 2,
    };
    let pods = topology::pod_names("server", 2, 1);
    let configs = topology::sidecar_configs(
        addrs,
        &pods,
        "client-0",
        policies,
        plugin,
        &artifacts.wasm,
        &endpoints_dir(name, &outbound_clusters()),
    );
    // The wasm filter (before the router) exactly where the WasmPlugin selects.
    let http_filters = |c: &serde_json::Value| {
        c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .map(Vec::len)
    };
    for (config, side) in [
        (&configs.servers[0], Side::Server),
        (&configs.client, Side::Client),
    ] {
        let want = 1 + usize::from(plugin.applies(side, 30051));
        assert_eq!(http_filters(config), Some(want), "{name} {side:?}");
    }
    assert_valid(&format!("mesh-server-{name}"), &configs.servers[0]);
    assert_valid(&format!("mesh-client-{name}"), &configs.client);
}

#[test]
fn every_rendered_config_passes_envoy_validate() {
    let istio = manifests::istio_dir(None);
    let plugin = our_plugin();
    let mut experiments = vec!["none".to_owned()];
    experiments.extend(manifests::experiments(&istio));
    for name in &experiments {
        let (policies, _) = manifests::experiment(&istio, name).unwrap();
        assert_sidecars_valid(name, &policies, &plugin);
    }
    // A WasmPlugin without `match` or `selector` goes on the client sidecar too.
    let mut everywhere = plugin.clone();
    let bare = sidecar::wasm_plugin::parse(&serde_json::json!({
        "kind": "WasmPlugin", "metadata": {"name": "upstream-tagger"}, "spec": {}
    }))
    .unwrap();
    everywhere.selectors = bare.selectors;
    everywhere.match_labels = bare.match_labels;
    assert!(everywhere.applies(Side::Client, 30051));
    assert_sidecars_valid("wasm-everywhere", &SidecarPolicies::default(), &everywhere);
    let l4 = kube_proxy::l4_service(
        addr("127.0.0.1:15000"),
        &[addr("127.0.0.1:30051")],
        &endpoints_dir("l4", &[kube_proxy::cluster_name(addr("127.0.0.1:30051"))]),
    );
    assert_valid("mesh-l4", &l4);
}

/// The in-Envoy filter tests (`filter/tests/in_envoy.rs`) and the mesh's
/// server pods run one rendering: `sidecar::inbound::server_pod` fed from the
/// same manifests. Given a mesh pod's addresses and its one gRPC port, it
/// renders exactly the bootstrap `Mesh::start` runs and `mesh render` writes.
#[test]
fn the_filter_tests_and_the_mesh_run_the_same_inbound_sidecar() {
    let istio = manifests::istio_dir(None);
    let plugin = our_plugin();
    let (inbound, _) = manifests::inbound_policy(&istio).unwrap();
    let wasm = std::path::Path::new("/m.wasm");
    let addrs = Addresses {
        subnet: 10,
        pods: 2,
    };
    let pods = topology::pod_names("server", 2, 1);
    for experiment in ["none", "reuse", "one-per-conn", "tight"] {
        let (policies, _) = manifests::experiment(&istio, experiment).unwrap();
        assert_eq!(
            policies.inbound, inbound,
            "the Sidecar's pool, not the rule's"
        );
        let configs = topology::sidecar_configs(
            addrs,
            &pods,
            "client-0",
            &policies,
            &plugin,
            wasm,
            &std::env::temp_dir(),
        );
        for (i, pod) in pods.iter().enumerate() {
            // What filter/tests/in_envoy.rs calls, with this pod's addresses.
            let rendered = sidecar::inbound::server_pod(
                pod,
                addrs.pod_ip(i),
                addrs.sidecar_admin(i),
                vec![
                    sidecar::InboundPort::grpc(addrs.app_grpc(i)).listen(addrs.sidecar_inbound(i)),
                    sidecar::InboundPort::http(addrs.app_http(i))
                        .listen(addrs.sidecar_inbound_http(i)),
                ],
                &inbound,
                &plugin,
                wasm,
            );
            assert_eq!(
                configs.servers[i],
                rendered.bootstrap(),
                "{experiment} {pod}"
            );
        }
    }
}

#[test]
fn a_config_envoy_rejects_is_reported_in_envoys_words() {
    let mut broken = kube_proxy::l4_service(addr("127.0.0.1:15000"), &[], &std::env::temp_dir());
    broken["static_resources"]["clusters"] =
        serde_json::json!([{"name": "x", "lb_policy": "NO_SUCH_POLICY"}]);
    let rejection = harness::envoy::Envoy::validate("mesh-broken", &broken)
        .expect("run envoy")
        .expect_err("Envoy must reject an unknown lb_policy");
    assert!(rejection.contains("NO_SUCH_POLICY"), "{rejection}");
}

#[test]
fn missing_envoy_and_wasm_name_the_fix() {
    let err = Artifacts::locate(Some("/nonexistent/envoy".into()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("make envoy"), "{err}");
    let err = Artifacts::locate(None, Some("/nonexistent/x.wasm".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("make wasm"), "{err}");
}

#[test]
fn an_address_in_use_is_a_clear_error_and_nothing_is_left_running() {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let plugin = our_plugin();
    let addrs = Addresses {
        subnet: common::subnet("envoy_configs: address in use"),
        pods: 2,
    };
    let _squatter = std::net::TcpListener::bind(addrs.app_grpc(1)).unwrap();
    let err = Mesh::start(&artifacts, addrs, &Layout::default(), &plugin, "in-use", 1)
        .err()
        .expect("start fails")
        .to_string();
    assert!(
        err.contains(&addrs.app_grpc(1).to_string()) && err.contains("not free"),
        "{err}"
    );
    // The first pod's address was never taken, so it is free again.
    std::net::TcpListener::bind(addrs.app_grpc(0)).expect("nothing left listening");
}

/// A DestinationRule setting every connectionPool field the translation
/// models: each lands in its Envoy cluster field (ISTIO-ENVOY.md §4), and
/// both sidecars carrying that cluster pass `envoy --mode validate`.
#[test]
fn every_connection_pool_field_renders_to_its_cluster_field_and_envoy_accepts_it() {
    use serde_json::json;
    let rule = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "server"},
        "spec": {"host": "server.default.svc.cluster.local", "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "connectionPool": {
                "tcp": {
                    "maxConnections": 7,
                    "connectTimeout": "250ms",
                    "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"},
                    "maxConnectionDuration": "30m",
                    "idleTimeout": "5m",
                },
                "http": {
                    "http1MaxPendingRequests": 11,
                    "http2MaxRequests": 13,
                    "maxRequestsPerConnection": 17,
                    "maxRetries": 2,
                    "idleTimeout": "7s",
                    "maxConcurrentStreams": 19,
                    "http2KeepAlive": {"interval": "10s", "timeout": "3s"},
                },
            },
        }},
    });
    let policy = sidecar::destination_rule::translate(&rule).unwrap().policy;
    let cluster = policy.envoy_cluster("c", Direction::Outbound, &[addr("127.0.0.2:15006")], true);
    let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let expected = [
        ("/lb_policy", json!("ROUND_ROBIN")),
        ("/connect_timeout", json!("0.250000000s")),
        ("/circuit_breakers/thresholds/0/max_connections", json!(7)),
        (
            "/circuit_breakers/thresholds/0/max_pending_requests",
            json!(11),
        ),
        ("/circuit_breakers/thresholds/0/max_requests", json!(13)),
        ("/circuit_breakers/thresholds/0/max_retries", json!(2)),
        (
            "/circuit_breakers/thresholds/0/track_remaining",
            json!(false),
        ),
        (
            "/upstream_connection_options/tcp_keepalive/keepalive_probes",
            json!(3),
        ),
        (
            "/upstream_connection_options/tcp_keepalive/keepalive_time",
            json!(7200),
        ),
        (
            "/upstream_connection_options/tcp_keepalive/keepalive_interval",
            json!(75),
        ),
    ];
    for (pointer, want) in expected {
        assert_eq!(
            cluster.pointer(pointer),
            Some(&want),
            "{pointer} in {cluster:#}"
        );
    }
    let expected_options = [
        (
            "/common_http_protocol_options/max_requests_per_connection",
            json!(17),
        ),
        ("/common_http_protocol_options/idle_timeout", json!("7s")),
        (
            "/common_http_protocol_options/max_connection_duration",
            json!("1800s"),
        ),
        (
            "/explicit_http_config/http2_protocol_options/max_concurrent_streams",
            json!(19),
        ),
        (
            "/explicit_http_config/http2_protocol_options/connection_keepalive/interval",
            json!("10s"),
        ),
        (
            "/explicit_http_config/http2_protocol_options/connection_keepalive/timeout",
            json!("3s"),
        ),
    ];
    for (pointer, want) in expected_options {
        assert_eq!(
            options.pointer(pointer),
            Some(&want),
            "{pointer} in {options:#}"
        );
    }

    // On both sides: the same translator reads a Sidecar's inboundConnectionPool.
    let policies = SidecarPolicies {
        outbound: policy.clone(),
        inbound: policy,
    };
    assert_sidecars_valid("every-field", &policies, &our_plugin());

    // Envoy requires a PING timeout: an interval alone is refused by name
    // rather than rendered into a config Envoy would reject.
    let mut interval_only = rule.clone();
    interval_only["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2KeepAlive"] =
        json!({"interval": "10s"});
    let err = sidecar::destination_rule::translate(&interval_only)
        .unwrap_err()
        .to_string();
    assert!(err.contains("http2KeepAlive.timeout"), "{err}");
}

/// A pluginConfig the filter refuses stops the server sidecar at start-up:
/// the mesh says which Envoy, shows the filter's own error line, and the fix.
#[test]
fn a_refused_plugin_config_is_a_clear_error_with_the_fix() {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let mut plugin = our_plugin();
    plugin.plugin_config = r#"{"max_tracked_connections":0}"#.into();
    let addrs = Addresses {
        subnet: common::subnet("envoy_configs: refused plugin config"),
        pods: 1,
    };
    let layout = Layout {
        l4_service: false,
        sidecars: Some(SidecarPolicies {
            outbound: ClusterPolicy::default(),
            inbound: ClusterPolicy::default(),
        }),
        server_args: Vec::new(),
        dns: false,
    };
    let err = Mesh::start(&artifacts, addrs, &layout, &plugin, "refused", 1)
        .err()
        .expect("start fails")
        .to_string();
    for expected in [
        "rejected its config",
        "invalid pluginConfig",
        "max_tracked_connections",
        "fix: ",
        "WasmPlugin",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    // Nothing of that mesh is left listening.
    std::net::TcpListener::bind(addrs.app_grpc(0)).expect("app port free again");
}
