//! Every config the local mesh renders is accepted by the real Envoy
//! (`--mode validate`), and broken inputs give one clear error.

use std::net::SocketAddr;

use mesh::{
    destination_rule::ClusterPolicy,
    envoy_config, manifests,
    topology::{self, Addresses, Artifacts, Layout, Mesh},
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

/// Both sidecars carrying `policy`'s cluster (the server one with our
/// WasmPlugin) pass `envoy --mode validate`.
fn assert_sidecars_valid(name: &str, policy: &ClusterPolicy) {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let plugin = manifests::wasm_plugin(&manifests::istio_dir(None)).unwrap();
    let server = envoy_config::server_sidecar(
        "server-0",
        addr("127.0.0.1:15000"),
        addr("127.0.0.1:15006"),
        addr("127.0.0.1:30051"),
        policy,
        Some(envoy_config::wasm_filter(&plugin, &artifacts.wasm)),
    );
    assert_valid(&format!("mesh-server-{name}"), &server);
    let client = envoy_config::client_sidecar(
        "client-0",
        addr("127.0.0.1:15000"),
        addr("127.0.0.1:30051"),
        topology::SERVICE_HOST,
        30051,
        policy,
        &[addr("127.0.0.2:15006"), addr("127.0.0.3:15006")],
    );
    assert_valid(&format!("mesh-client-{name}"), &client);
}

#[test]
fn every_rendered_config_passes_envoy_validate() {
    let istio = manifests::istio_dir(None);
    let mut policies = vec![("default".to_owned(), ClusterPolicy::default())];
    for name in manifests::EXPERIMENTS {
        policies.push((
            name.to_owned(),
            manifests::destination_rule(&istio, name).unwrap().policy,
        ));
    }
    for (name, policy) in &policies {
        assert_sidecars_valid(name, policy);
    }
    let l4 = envoy_config::l4_service(
        addr("127.0.0.1:15000"),
        &[(addr("127.0.0.1:30051"), vec![addr("127.0.0.2:30051")])],
    );
    assert_valid("mesh-l4", &l4);
}

#[test]
fn a_config_envoy_rejects_is_reported_in_envoys_words() {
    let mut broken = envoy_config::l4_service(addr("127.0.0.1:15000"), &[]);
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
    let plugin = manifests::wasm_plugin(&manifests::istio_dir(None)).unwrap();
    let addrs = Addresses {
        subnet: 120,
        pods: 2,
    };
    let _squatter = std::net::TcpListener::bind(addrs.app_grpc(1)).unwrap();
    let err = Mesh::start(&artifacts, addrs, &Layout::default(), &plugin, "in-use", 1)
        .err()
        .expect("start fails")
        .to_string();
    assert!(
        err.contains("127.120.1.2:30051") && err.contains("not free"),
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
    let translation = mesh::destination_rule::translate(&rule).unwrap();
    assert!(
        translation.warnings.is_empty(),
        "{:?}",
        translation.warnings
    );
    let policy = translation.policy;
    let cluster = policy.envoy_cluster("c", &[addr("127.0.0.2:15006")], true);
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
            json!(true),
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

    assert_sidecars_valid("every-field", &policy);

    // Envoy requires a PING timeout: an interval alone is refused by name
    // rather than rendered into a config Envoy would reject.
    let mut interval_only = rule.clone();
    interval_only["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2KeepAlive"] =
        json!({"interval": "10s"});
    let err = mesh::destination_rule::translate(&interval_only)
        .unwrap_err()
        .to_string();
    assert!(err.contains("http2KeepAlive.timeout"), "{err}");
}

/// A pluginConfig the filter refuses stops the server sidecar at start-up:
/// the mesh says which Envoy, shows the filter's own error line, and the fix.
#[test]
fn a_refused_plugin_config_is_a_clear_error_with_the_fix() {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let mut plugin = manifests::wasm_plugin(&manifests::istio_dir(None)).unwrap();
    plugin.plugin_config = r#"{"max_tracked_connections":0}"#.into();
    let addrs = Addresses {
        subnet: 121,
        pods: 1,
    };
    let layout = Layout {
        l4_service: false,
        sidecars: Some(ClusterPolicy::default()),
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
