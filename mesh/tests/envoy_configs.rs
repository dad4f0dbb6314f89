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

#[test]
fn every_rendered_config_passes_envoy_validate() {
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm");
    let istio = manifests::istio_dir(None);
    let plugin = manifests::wasm_plugin(&istio).unwrap();
    let mut policies = vec![("default".to_owned(), ClusterPolicy::default())];
    for name in manifests::EXPERIMENTS {
        policies.push((
            name.to_owned(),
            manifests::destination_rule(&istio, name).unwrap().policy,
        ));
    }
    for (name, policy) in &policies {
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
