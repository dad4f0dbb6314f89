//! The clients behind a real Envoy that closes every connection after one
//! request (`max_requests_per_connection: 1`, as a DestinationRule's
//! `maxRequestsPerConnection: 1` does): the loop must reconnect and go on.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::{CLIENT_GRPC, CLIENT_HTTP, DEADLINE, TestServer, run_client, split_call};
use http_body_util::BodyExt as _;
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};

struct Envoy {
    _child: Child,
    log: PathBuf,
    grpc_port: u16,
    http_port: u16,
}

fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy not found at {} (ENVOY): run `make envoy`",
        path.display()
    );
    path
}

/// Downstream and upstream connections both carry one request, then close.
fn config(grpc_upstream: u16, http_upstream: u16) -> String {
    let listener = |name: &str| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          common_http_protocol_options: {{max_requests_per_connection: 1}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {name}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    let cluster = |name: &str, port: u16, h2: bool| {
        let protocol = if h2 {
            "explicit_http_config: {http2_protocol_options: {}}"
        } else {
            "explicit_http_config: {http_protocol_options: {}}"
        };
        format!(
            r#"
  - name: {name}
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{max_requests_per_connection: 1}}
        {protocol}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"#
        )
    };
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n\
         static_resources:\n  listeners:{}{}\n  clusters:{}{}\n",
        listener("grpc"),
        listener("http"),
        cluster("grpc", grpc_upstream, true),
        cluster("http", http_upstream, false),
    )
}

impl Envoy {
    async fn start(name: &str, server: &TestServer) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("clients-tests")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config(server.grpc.port(), server.http.port())).unwrap();
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start Envoy");

        let ports = async {
            loop {
                if let Ok(admin) = std::fs::read_to_string(&admin_path)
                    && let Some(ports) = listener_ports(admin.trim()).await
                {
                    return ports;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (grpc_port, http_port) = tokio::time::timeout(DEADLINE, ports)
            .await
            .unwrap_or_else(|_| panic!("Envoy not ready; see {}", log.display()));
        Envoy {
            _child: child,
            log,
            grpc_port,
            http_port,
        }
    }

    /// Envoy logged nothing at error level or worse.
    fn assert_clean_log(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("[critical]") || l.contains("[error]"))
            .collect();
        assert!(
            bad.is_empty(),
            "{}:\n{}",
            self.log.display(),
            bad.join("\n")
        );
    }
}

/// The bound ports of the `grpc` and `http` listeners, once Envoy is LIVE.
async fn listener_ports(admin: &str) -> Option<(u16, u16)> {
    if admin_get(admin, "/ready").await?.trim() != "LIVE" {
        return None;
    }
    let body = admin_get(admin, "/listeners?format=json").await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let port = |name: &str| {
        json["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    };
    Some((port("grpc")?, port("http")?))
}

async fn admin_get(admin: &str, path: &str) -> Option<String> {
    let stream = TcpStream::connect(admin).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "admin")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reuse_mode_reconnects_through_a_proxy_closing_every_connection() {
    let server = TestServer::start("pod-a").await;
    let envoy = Envoy::start("envoy-grpc", &server).await;
    let host = format!("127.0.0.1:{}", envoy.grpc_port);
    let out = run_client(
        "envoy-grpc",
        CLIENT_GRPC,
        &["--host", &host, "--count", "30", "--interval", "0"],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let calls = out.calls();
    assert_eq!(calls.len(), 30, "{}", out.stdout);
    for line in &calls {
        assert_eq!(
            split_call(line).1,
            "pod-a conn-requests=1",
            "{}",
            out.stdout
        );
    }
    let summary = out.last_summary();
    assert!(
        summary.starts_with("--- summary: 30 calls, 30 ok, 0 errors"),
        "{summary}"
    );
    assert!(
        summary.contains("connections: 30 distinct, max requests on one: 1"),
        "{summary}"
    );
    envoy.assert_clean_log();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_keepalive_reconnects_when_the_proxy_closes_after_each_request() {
    let server = TestServer::start("pod-a").await;
    let envoy = Envoy::start("envoy-http", &server).await;
    let url = format!("http://127.0.0.1:{}/pod", envoy.http_port);
    let out = run_client(
        "envoy-http",
        CLIENT_HTTP,
        &[
            "--url",
            &url,
            "--keepalive",
            "--count",
            "10",
            "--interval",
            "0",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let calls = out.calls();
    assert_eq!(calls.len(), 10, "{}", out.stdout);
    for line in &calls {
        assert_eq!(
            split_call(line).1,
            "pod-a conn-requests=1",
            "{}",
            out.stdout
        );
    }
    assert!(
        out.last_summary()
            .contains("connections: 10 distinct, max requests on one: 1")
    );
    envoy.assert_clean_log();
}
