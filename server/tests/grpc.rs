//! The gRPC side, served in-process on ephemeral ports.

use std::time::Duration;

use proto::{InfoRequest, PodClient};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

struct Running {
    grpc: String,
    http: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn start(config: server::Config) -> Running {
    let server = server::Server::bind(config).await.expect("bind");
    let grpc = format!("http://{}", server.grpc_addr());
    let http = server.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        grpc,
        http,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }
}

#[tokio::test]
async fn get_info_returns_the_pod_name() {
    let server = start(server::Config::local("server-7d4b9-x1")).await;
    let mut client = PodClient::new(server.channel().await);
    let response = client
        .get_info(InfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.name, "server-7d4b9-x1");
    assert!(
        response.peer.starts_with("127.0.0.1:"),
        "peer {:?}",
        response.peer
    );
}

#[tokio::test]
async fn request_count_is_per_connection() {
    let server = start(server::Config::local("p")).await;
    let mut first = PodClient::new(server.channel().await);
    let mut counts = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let r = first
            .get_info(InfoRequest::default())
            .await
            .unwrap()
            .into_inner();
        counts.push(r.connection_requests);
        peers.push(r.peer);
    }
    assert_eq!(counts, [1, 2, 3]);
    assert!(
        peers.iter().all(|p| p == &peers[0]),
        "one connection: {peers:?}"
    );

    let mut second = PodClient::new(server.channel().await);
    let r = second
        .get_info(InfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.connection_requests, 1,
        "a new channel is a new connection"
    );
    assert_ne!(r.peer, peers[0]);
}

#[tokio::test]
async fn health_reports_serving_then_not_serving_while_draining() {
    let mut config = server::Config::local("p");
    // Generous margins for a slow CI machine: the grace must outlast the
    // NOT_SERVING and /healthz checks, the call must outlast the grace.
    config.drain_grace = Duration::from_secs(2);
    let mut server = start(config).await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", proto::SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }

    // A call in flight across the whole drain must still complete.
    let mut pod = PodClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { pod.get_info(InfoRequest { delay_ms: 5000 }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.take().unwrap().send(()).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers during the drain grace")
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The HTTP side says so too, for kubelet's HTTP probes.
    let healthz = harness::http::get_async(server.http, "/healthz", Duration::from_secs(5))
        .await
        .expect("/healthz answers");
    assert_eq!(healthz.status, 503, "{healthz:?}");

    // After the grace the listener closes while the call is still running:
    // new connections are refused during the drain, not only after it.
    let grpc_addr = server.grpc.trim_start_matches("http://").to_owned();
    loop {
        if tokio::net::TcpStream::connect(&grpc_addr).await.is_err() {
            break;
        }
        assert!(
            !in_flight.is_finished(),
            "the listener was still open when the in-flight call finished"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the drain did not wait for the call"
    );

    let answer = in_flight.await.unwrap().expect("in-flight call completes");
    assert_eq!(answer.into_inner().name, "p");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server exits within the drain bound")
        .unwrap()
        .unwrap();
    let refused = tokio::net::TcpStream::connect(server.grpc.trim_start_matches("http://")).await;
    assert!(
        refused.is_err(),
        "new connections are refused after shutdown"
    );
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown_with_a_stuck_call() {
    let mut config = server::Config::local("p");
    config.drain_timeout = Duration::from_millis(300);
    let mut server = start(config).await;
    let mut pod = PodClient::new(server.channel().await);
    let _stuck = tokio::spawn(async move { pod.get_info(InfoRequest { delay_ms: 20_000 }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("exits after drain_timeout, not after the stuck call")
        .unwrap()
        .unwrap();
}

/// The service names reflection `$version` (v1, or v1alpha for older
/// grpcurl) lists; both protocols have the same shape, in different modules.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer: {response:?}");
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    let server = start(server::Config::local("p")).await;
    let v1 = list_services!(v1, server.channel().await);
    let v1alpha = list_services!(v1alpha, server.channel().await);
    for names in [&v1, &v1alpha] {
        for expected in [proto::SERVICE_NAME, "grpc.health.v1.Health"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }
}

#[tokio::test]
async fn echo_metadata_comes_back_as_response_metadata() {
    let server = start(server::Config::local("p")).await;
    let mut client = PodClient::new(server.channel().await);
    let mut request = tonic::Request::new(InfoRequest::default());
    request.metadata_mut().append(
        proto::ECHO_RESPONSE_HEADER,
        "x-upstream-pod=evil".parse().unwrap(),
    );
    let response = client.get_info(request).await.unwrap();
    assert_eq!(response.metadata().get("x-upstream-pod").unwrap(), "evil");

    let mut bad = tonic::Request::new(InfoRequest::default());
    bad.metadata_mut().append(
        proto::ECHO_RESPONSE_HEADER,
        "no-equals-sign".parse().unwrap(),
    );
    let status = client.get_info(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_requests_get_grpc_errors_not_panics() {
    let server = start(server::Config::local("p")).await;
    let channel = server.channel().await;

    let too_slow = PodClient::new(channel.clone())
        .get_info(InfoRequest {
            delay_ms: 3_600_000,
        })
        .await
        .unwrap_err();
    assert_eq!(too_slow.code(), Code::InvalidArgument);
    assert!(
        too_slow.message().contains("delay_ms"),
        "{}",
        too_slow.message()
    );

    // An unknown method on the known service, and an oversized message
    // (a field the server does not know, padded past the limit).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Padded {
        #[prost(bytes = "vec", tag = "99")]
        junk: Vec<u8>,
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let unknown = grpc
        .unary::<_, Padded, _>(
            tonic::Request::new(Padded { junk: vec![] }),
            "/api.protobuf.pod/noSuchMethod".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented);

    // Every service on the port has the same limit, not only getInfo.
    for path in [proto::GET_INFO_PATH, "/grpc.health.v1.Health/Check"] {
        grpc.ready().await.unwrap();
        let oversized = grpc
            .unary::<_, Padded, _>(
                tonic::Request::new(Padded {
                    junk: vec![7; server::MAX_MESSAGE_BYTES + 1],
                }),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        // tonic reports an over-limit message as OUT_OF_RANGE.
        assert_eq!(oversized.code(), Code::OutOfRange, "{path}: {oversized:?}");
        assert!(
            oversized.message().contains("too large"),
            "{path}: {}",
            oversized.message()
        );
    }

    // The server is still fine afterwards.
    let ok = PodClient::new(channel)
        .get_info(InfoRequest::default())
        .await;
    assert_eq!(ok.unwrap().into_inner().name, "p");
}

#[tokio::test]
async fn garbage_bytes_on_the_grpc_port_do_not_hurt_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(server::Config::local("p")).await;
    let addr = server.grpc.trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage")
        .await
        .unwrap();
    let mut sink = Vec::new();
    // The server closes the connection (h2 preface mismatch) rather than hang.
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink))
        .await
        .expect("server closes a garbage connection")
        .ok();
    let ok = PodClient::new(server.channel().await)
        .get_info(InfoRequest::default())
        .await;
    assert_eq!(ok.unwrap().into_inner().name, "p");
}

// ---- max connection age (issue 12) -------------------------------------------

fn with_age(age_ms: u64, grace_ms: Option<u64>) -> server::Config {
    let mut config = server::Config::local("p");
    config.max_connection_age = Some(Duration::from_millis(age_ms));
    config.max_connection_age_grace = grace_ms.map(Duration::from_millis);
    config
}

/// What a tonic client sees of a GOAWAY: hyper's HTTP/2 client notices it
/// only when the next call is handed over, and fails that call with CANCELLED
/// "operation was canceled" (connection closed) without sending it
/// (hyperium/hyper#2500); the call after it opens a new connection.
fn is_unsent_at_goaway(status: &tonic::Status) -> bool {
    status.code() == Code::Cancelled && status.message() == "operation was canceled"
}

/// One Channel calling back to back for 2s against a 300ms age: the server's
/// GOAWAYs move it to a new connection several times, and every call the
/// server received was answered. A call tonic cancels unsent at a GOAWAY
/// (rare with one call at a time: a race) succeeds when made again.
#[tokio::test]
async fn max_age_moves_a_busy_channel_to_new_connections_without_losing_calls() {
    let server = start(with_age(300, Some(2000))).await;
    let mut client = PodClient::new(server.channel().await);
    let started = tokio::time::Instant::now();
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut unsent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let n = seen.len() + 1;
        let r = match client.get_info(InfoRequest::default()).await {
            Ok(r) => r,
            Err(e) if is_unsent_at_goaway(&e) => {
                unsent += 1;
                client
                    .get_info(InfoRequest::default())
                    .await
                    .unwrap_or_else(|e| panic!("call #{n} failed again: {e:?}"))
            }
            Err(e) => panic!("call #{n} failed: {e:?}"),
        }
        .into_inner();
        seen.push((r.peer, r.connection_requests));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut peers: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    peers.dedup();
    // ~6 ages fit in 2s; 3 leaves room for a slow machine.
    assert!(
        peers.len() >= 3,
        "{} calls on {} connections: {peers:?}",
        seen.len(),
        peers.len()
    );
    // Each connection was used for one run of calls numbered 1, 2, 3, ... by
    // the server: no call reached the server and went unanswered, and the
    // channel never went back to an old connection.
    for (i, (peer, count)) in seen.iter().enumerate() {
        let expected = match i.checked_sub(1).map(|j| &seen[j]) {
            Some((prev_peer, prev)) if prev_peer == peer => prev + 1,
            _ => 1,
        };
        assert_eq!(*count, expected, "call #{}: {seen:?}", i + 1);
    }
    assert!(
        unsent < peers.len(),
        "{unsent} calls cancelled for {} connections",
        peers.len()
    );
}

/// A call held past the age completes on its old connection, while calls
/// made after the age go to a new one: the GOAWAY came at the age, the close
/// waits for the call. With and without a grace.
#[tokio::test]
async fn a_call_in_flight_at_the_age_completes_while_new_calls_use_a_new_connection() {
    for grace in [Some(6000), None] {
        let server = start(with_age(300, grace)).await;
        let channel = server.channel().await;
        let mut held = PodClient::new(channel.clone());
        let in_flight =
            // Held 3 s: well past the age (300 ms) and the checks below, on
            // a loaded machine too.
            tokio::spawn(async move { held.get_info(InfoRequest { delay_ms: 3000 }).await });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!in_flight.is_finished(), "grace {grace:?}: ended early");
        let mut client = PodClient::new(channel);
        let after_age = match client.get_info(InfoRequest::default()).await {
            Ok(r) => r,
            // With a stream open on the GOAWAY'd connection, tonic hands it
            // the next call, and cancels it (see is_unsent_at_goaway).
            Err(e) if is_unsent_at_goaway(&e) => client
                .get_info(InfoRequest::default())
                .await
                .unwrap_or_else(|e| panic!("grace {grace:?}: second call after the age: {e:?}")),
            Err(e) => panic!("grace {grace:?}: call after the age failed: {e:?}"),
        }
        .into_inner();
        assert!(
            !in_flight.is_finished(),
            "grace {grace:?}: the held call ended before the new connection was used"
        );
        let held = in_flight
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("grace {grace:?}: the held call failed: {e:?}"))
            .into_inner();
        assert_eq!(held.connection_requests, 1, "grace {grace:?}");
        assert_ne!(
            after_age.peer, held.peer,
            "grace {grace:?}: the call after the age went to the old connection"
        );
        assert_eq!(after_age.connection_requests, 1, "grace {grace:?}");
    }
}

/// After age + grace the connection is closed under a call still running.
#[tokio::test]
async fn a_call_outlasting_the_grace_is_cut_at_age_plus_grace() {
    let server = start(with_age(300, Some(300))).await;
    let channel = server.channel().await;
    let started = tokio::time::Instant::now();
    let cut = PodClient::new(channel.clone())
        .get_info(InfoRequest { delay_ms: 5000 })
        .await;
    let after = started.elapsed();
    let status = cut.expect_err("a 5s call outlived a 300ms age + 300ms grace");
    assert!(
        after >= Duration::from_millis(550) && after < Duration::from_secs(3),
        "cut after {after:?} ({status:?}), expected ~600ms"
    );
    // The channel reconnects for the next call.
    let next = PodClient::new(channel)
        .get_info(InfoRequest::default())
        .await
        .expect("a call after the cut");
    assert_eq!(next.into_inner().connection_requests, 1);
}

/// Bad values exit 64 (EX_USAGE) with one message that says what to do,
/// before anything listens.
#[tokio::test]
async fn bad_max_age_flags_exit_64_with_a_clear_message() {
    struct Case {
        args: &'static [&'static str],
        env: Option<(&'static str, &'static str)>,
        expected: &'static [&'static str],
    }
    let cases = [
        Case {
            args: &["--max-connection-age=0"],
            env: None,
            expected: &["--max-connection-age must be greater than 0", "omit it"],
        },
        Case {
            args: &[],
            env: Some(("MAX_CONNECTION_AGE", "0s")),
            expected: &["--max-connection-age must be greater than 0"],
        },
        Case {
            args: &["--max-connection-age-grace=5s"],
            env: None,
            expected: &["--max-connection-age-grace needs --max-connection-age"],
        },
        Case {
            args: &["--max-connection-age=1s", "--max-connection-age-grace=0"],
            env: None,
            expected: &["--max-connection-age-grace must be greater than 0"],
        },
    ];
    for Case {
        args,
        env,
        expected,
    } in cases
    {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args(["--grpc-addr=127.0.0.1:0", "--http-addr=127.0.0.1:0"])
            .args(args)
            .env_remove("MAX_CONNECTION_AGE")
            .env_remove("MAX_CONNECTION_AGE_GRACE")
            .envs(env)
            .kill_on_drop(true);
        // A server that wrongly starts is killed (kill_on_drop), not waited on.
        let out = tokio::time::timeout(Duration::from_secs(10), command.output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} {env:?}: still running after 10s"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(stderr.starts_with("server: "), "{args:?}: {stderr}");
        for fragment in expected {
            assert!(stderr.contains(fragment), "{args:?} {env:?}: {stderr}");
        }
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
