//! `client-grpc` as a real process against the real echo server.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use common::{
    CLIENT_GRPC, KillableServer, Running, TestServer, closed_port, run_client, run_client_with_env,
    split_call,
};

#[tokio::test(flavor = "multi_thread")]
async fn reuse_mode_sends_every_call_on_one_connection() {
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let out = run_client(
        "grpc-reuse",
        CLIENT_GRPC,
        &["--host", &host, "--count", "3", "--interval", "0"],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.calls(),
        [
            "#1: pod-a conn-requests=1",
            "#2: pod-a conn-requests=2",
            "#3: pod-a conn-requests=3"
        ]
    );
    let summary = out.last_summary();
    assert!(
        summary.starts_with("--- summary: 3 calls, 3 ok, 0 errors\n"),
        "{summary}"
    );
    assert_eq!(
        out.summary_row("pod-a"),
        Some((3, "100.0%".into())),
        "{summary}"
    );
    assert!(
        summary.contains("connections: 1 distinct, max requests on one: 3"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_call_mode_opens_a_new_connection_each_call() {
    let server = TestServer::start("pod-a").await;
    let host = format!("http://{}", server.grpc);
    let out = run_client(
        "grpc-per-call",
        CLIENT_GRPC,
        &[
            "--target",
            &host,
            "--mode",
            "per-call",
            "--count",
            "3",
            "--interval",
            "10ms",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.calls(),
        [
            "#1: pod-a conn-requests=1",
            "#2: pod-a conn-requests=1",
            "#3: pod-a conn-requests=1"
        ]
    );
    assert!(
        out.last_summary()
            .contains("connections: 3 distinct, max requests on one: 1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_parse_and_the_summary_adds_up() {
    let server = TestServer::start("pod-a").await;
    let host = format!("dns:///{}", server.grpc);
    let unix_us = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let before = unix_us();
    let out = run_client(
        "grpc-json",
        CLIENT_GRPC,
        &["--host", &host, "--count", "3", "--interval", "0", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let lines = out.json();
    assert_eq!(lines.len(), 4, "3 calls and a summary: {}", out.stdout);
    for (i, call) in lines[..3].iter().enumerate() {
        assert_eq!(call["n"], i as u64 + 1);
        assert_eq!(call["ok"], true);
        assert_eq!(call["pod"], "pod-a");
        assert_eq!(call["conn_requests"], i as u64 + 1);
        assert!(
            call["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{call}"
        );
        assert!(call["latency_us"].is_u64(), "{call}");
    }
    // Each call's wall-clock start: during the run, and one call at a time
    // (the next starts once the previous one has ended).
    let after = unix_us();
    let started = |i: usize| lines[i]["started_unix_us"].as_u64().unwrap();
    let latency = |i: usize| lines[i]["latency_us"].as_u64().unwrap();
    assert!(
        before <= started(0) && started(2) + latency(2) <= after,
        "{lines:?}"
    );
    for i in 1..3 {
        assert!(started(i) >= started(i - 1) + latency(i - 1), "{lines:?}");
    }
    assert_eq!(
        lines[3],
        serde_json::json!({"summary": {
            "calls": 3, "ok": 3, "errors": 0, "pods": {"pod-a": 3},
            "connections": 1, "max_connection_requests": 3, "errors_by_code": {}
        }})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_server_gives_an_error_per_call_and_a_failing_exit() {
    let dead = closed_port().to_string();
    for mode in ["reuse", "per-call", "round-robin"] {
        let out = run_client(
            &format!("grpc-dead-{mode}"),
            CLIENT_GRPC,
            &[
                "--host",
                &dead,
                "--mode",
                mode,
                "--count",
                "3",
                "--interval",
                "10ms",
            ],
        )
        .await;
        let calls = out.calls();
        assert_eq!(calls.len(), 3, "{mode}: {}", out.stdout);
        for (i, line) in calls.iter().enumerate() {
            let (n, rest) = split_call(line);
            assert_eq!(n, i as u64 + 1);
            assert!(rest.starts_with("error: UNAVAILABLE "), "{mode}: {line}");
            assert!(rest.contains("refused"), "{mode}: {line}");
        }
        assert!(
            out.last_summary()
                .starts_with("--- summary: 3 calls, 0 ok, 3 errors")
        );
        assert_eq!(
            out.summary_row("error UNAVAILABLE"),
            Some((3, "100.0%".into())),
            "{}",
            out.stdout
        );
        assert_eq!(out.status.code(), Some(1), "{mode}: every call failed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_errors_carry_code_and_message() {
    let dead = closed_port().to_string();
    let out = run_client(
        "grpc-dead-json",
        CLIENT_GRPC,
        &["--host", &dead, "--count", "2", "--interval", "0", "--json"],
    )
    .await;
    let lines = out.json();
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["code"], "UNAVAILABLE");
    assert!(lines[0]["message"].as_str().unwrap().contains("refused"));
    assert!(lines[0].get("pod").is_none());
    assert_eq!(lines[2]["summary"]["errors_by_code"]["UNAVAILABLE"], 2);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_survives_a_server_restart_and_reconnects() {
    let first = TestServer::start("pod-a").await;
    let addr = first.grpc;
    let host = addr.to_string();
    let mut client = Running::spawn(
        "grpc-restart",
        CLIENT_GRPC,
        &["--host", &host, "--interval", "20ms"],
    );
    client
        .wait_for_line(|l| l.contains("pod-a conn-requests=3"))
        .await;

    first.stop().await;
    client
        .wait_for_line(|l| l.contains(": error: UNAVAILABLE"))
        .await;

    let mut config = server::Config::local("pod-b");
    config.grpc_addr = addr;
    let _second = TestServer::start_with(config).await;
    // The same channel reconnects by itself: a new connection, counted from 1.
    client
        .wait_for_line(|l| l.ends_with("pod-b conn-requests=1"))
        .await;
    client
        .wait_for_line(|l| l.ends_with("pod-b conn-requests=2"))
        .await;

    let out = client.signal_and_finish("TERM").await;
    assert!(
        out.status.success(),
        "some calls succeeded: {:?}",
        out.status
    );
    let summary = out.last_summary();
    assert!(summary.contains("  pod-a "), "{summary}");
    assert!(summary.contains("  pod-b "), "{summary}");
    assert!(summary.contains("  error UNAVAILABLE "), "{summary}");
    // Numbering never restarted or skipped.
    let numbers: Vec<u64> = out.calls().iter().map(|l| split_call(l).0).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_over_localhost_resolves_and_calls() {
    let server = TestServer::start("pod-a").await;
    let host = format!("localhost:{}", server.grpc.port());
    let out = run_client(
        "grpc-rr-localhost",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--mode",
            "round-robin",
            "--count",
            "3",
            "--interval",
            "0",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let calls = out.calls();
    assert_eq!(calls.len(), 3, "{}", out.stdout);
    // localhost may also resolve to ::1, where nothing listens: that endpoint
    // may fail once and is then skipped; every 127.0.0.1 call succeeds.
    let ok: Vec<&str> = calls
        .iter()
        .filter(|l| l.contains(": pod-a "))
        .copied()
        .collect();
    assert!(ok.len() >= 2, "{}", out.stdout);
    assert!(
        out.stderr.contains("round-robin: "),
        "endpoint set is logged: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_rotates_over_every_address_with_one_connection_each() {
    let a = TestServer::start("pod-a").await;
    let b = TestServer::start("pod-b").await;
    let list = format!("{},{}", a.grpc, b.grpc);
    let out = run_client(
        "grpc-rr-list",
        CLIENT_GRPC,
        &[
            "--host",
            &list,
            "--mode",
            "round-robin",
            "--count",
            "6",
            "--interval",
            "0",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let pods: Vec<&str> = out.calls().iter().map(|l| split_call(l).1).collect();
    // Strict alternation; each pod's connection counts 1, 2, 3.
    let (first, second) = if a.grpc < b.grpc {
        ("pod-a", "pod-b")
    } else {
        ("pod-b", "pod-a")
    };
    let want: Vec<String> = (1..=3)
        .flat_map(|i| {
            [
                format!("{first} conn-requests={i}"),
                format!("{second} conn-requests={i}"),
            ]
        })
        .collect();
    assert_eq!(pods, want);
    let summary = out.last_summary();
    assert_eq!(
        out.summary_row("pod-a"),
        Some((3, "50.0%".into())),
        "{summary}"
    );
    assert_eq!(
        out.summary_row("pod-b"),
        Some((3, "50.0%".into())),
        "{summary}"
    );
    assert!(
        summary.contains("connections: 2 distinct, max requests on one: 3"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_skips_a_dead_endpoint_after_it_fails() {
    let live = TestServer::start("pod-a").await;
    let list = format!("{},{}", live.grpc, closed_port());
    let out = run_client(
        "grpc-rr-dead-endpoint",
        CLIENT_GRPC,
        &[
            "--host",
            &list,
            "--mode",
            "round-robin",
            "--count",
            "6",
            "--interval",
            "0",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let errors = out
        .calls()
        .iter()
        .filter(|l| l.contains("error: UNAVAILABLE"))
        .count();
    assert_eq!(
        errors, 1,
        "the dead one fails once, then backs off:\n{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callers_share_the_numbering_and_one_channel() {
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let out = run_client(
        "grpc-concurrency",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--concurrency",
            "4",
            "--count",
            "20",
            "--interval",
            "0",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let mut numbers: Vec<u64> = out.calls().iter().map(|l| split_call(l).0).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    assert!(
        out.last_summary()
            .contains("connections: 1 distinct, max requests on one: 20")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_call_past_the_timeout_is_deadline_exceeded() {
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let out = run_client(
        "grpc-deadline",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--delay",
            "2s",
            "--timeout",
            "100ms",
            "--count",
            "2",
            "--interval",
            "0",
        ],
    )
    .await;
    assert_eq!(
        out.calls(),
        [
            "#1: error: DEADLINE_EXCEEDED no answer within 100ms",
            "#2: error: DEADLINE_EXCEEDED no answer within 100ms"
        ]
    );
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tags_are_printed_and_key_the_connections() {
    // The echo server sets any response header we ask for: here, the three
    // tags as the filter would.
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let echo = proto::ECHO_RESPONSE_HEADER;
    let out = run_client(
        "grpc-tags",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--mode",
            "per-call",
            "--count",
            "2",
            "--interval",
            "0",
            "-H",
            &format!("{echo}: x-upstream-pod=sidecar-pod"),
            "-H",
            &format!("{echo}: x-upstream-connection-id=42"),
            "-H",
            &format!("{echo}: x-upstream-connection-requests=7"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.calls(),
        [
            "#1: pod-a conn-requests=1 x-upstream-pod=sidecar-pod x-upstream-connection-id=42 x-upstream-connection-requests=7",
            "#2: pod-a conn-requests=1 x-upstream-pod=sidecar-pod x-upstream-connection-id=42 x-upstream-connection-requests=7",
        ]
    );
    // Two client connections, but the tags say one sidecar connection: the
    // tags win, as they do behind a real sidecar.
    assert!(
        out.last_summary()
            .contains("connections: 1 distinct, max requests on one: 7"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_ends_an_endless_loop_with_a_summary() {
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let mut client = Running::spawn(
        "grpc-sigint",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--interval",
            "10ms",
            "--summary-every",
            "2",
        ],
    );
    client.wait_for_line(|l| l.starts_with("#3: ")).await;
    let out = client.signal_and_finish("INT").await;
    assert!(out.status.success(), "{:?}", out.status);
    let calls = out.calls().len();
    let summary = out.last_summary();
    assert!(
        summary.starts_with(&format!("--- summary: {calls} calls, {calls} ok, 0 errors")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--- summary: 2 calls"),
        "periodic summary: {}",
        out.stdout
    );
    assert!(out.stderr.contains("SIGINT"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flags_give_one_line_and_exit_64() {
    for (args, mentions) in [
        (&["--host", "x:1", "--interval", "5"][..], "--interval"),
        (&["--host", "x:1", "--mode", "random"], "--mode"),
        (&["--host", "x"], "no port"),
        (&["--host", "a:1,b:2"], "round-robin"),
        (&["--host", "x:1", "--timeout", "0"], "--timeout"),
        (
            &["--host", "x:1", "--keepalive-time", "0"],
            "--keepalive-time",
        ),
        (
            &[
                "--host",
                "x:1",
                "--keepalive-time",
                "1s",
                "--keepalive-timeout",
                "0",
            ],
            "--keepalive-timeout",
        ),
        (
            &["--host", "x:1", "--keepalive-timeout", "1s"],
            "--keepalive-time",
        ),
        (&[], "--host"),
    ] {
        let out = run_client("grpc-bad-flags", CLIENT_GRPC, args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(mentions), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_flag_can_come_from_the_environment() {
    // How a Deployment may configure it: env instead of args.
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    let out = run_client_with_env(
        "grpc-env",
        CLIENT_GRPC,
        &[],
        &[
            ("CLIENT_TARGET", &host),
            ("CLIENT_MODE", "per-call"),
            ("CLIENT_COUNT", "2"),
            ("CLIENT_INTERVAL", "10ms"),
            ("CLIENT_JSON", "1"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let lines = out.json();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[1]["conn_requests"], 1, "per-call mode");
    assert_eq!(lines[2]["summary"]["calls"], 2);
}

/// Issue 14, item 5: a call the server had started, cut because the server
/// was killed or its drain timeout passed, is UNAVAILABLE (the connection
/// went away), not tonic's UNKNOWN "transport error".
#[tokio::test(flavor = "multi_thread")]
async fn a_call_cut_by_a_killed_or_drained_server_is_unavailable() {
    // Call #1 proves the connection; #2 is held 3 s by the server and cut.
    let args = |host: &str| {
        [
            "--host",
            host,
            "--count",
            "2",
            "--interval",
            "0",
            "--delay",
            "3s",
            "--timeout",
            "20s",
        ]
        .map(str::to_owned)
    };
    let cut_call = |out: &common::Output, case: &str| {
        let calls = out.calls();
        assert_eq!(calls.len(), 2, "{case}: {}", out.stdout);
        let (n, rest) = split_call(calls[1]);
        assert_eq!(n, 2);
        assert!(
            rest.starts_with("error: UNAVAILABLE "),
            "{case}: {}",
            calls[1]
        );
        // Cut mid-call, not refused before it: the connection existed.
        assert!(!rest.contains("refused"), "{case}: {}", calls[1]);
    };

    let killed = KillableServer::start("pod-a");
    let host = killed.grpc.to_string();
    let args_killed = args(&host);
    let argv: Vec<&str> = args_killed.iter().map(String::as_str).collect();
    let mut client = Running::spawn("grpc-cut-killed", CLIENT_GRPC, &argv);
    client.wait_for_line(|l| l.starts_with("#1: pod-a")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    killed.kill();
    cut_call(&client.finish().await, "killed");

    let mut config = server::Config::local("pod-a");
    config.drain_timeout = Duration::from_millis(300);
    let drained = TestServer::start_with(config).await;
    let host = drained.grpc.to_string();
    let args_drained = args(&host);
    let argv: Vec<&str> = args_drained.iter().map(String::as_str).collect();
    let mut client = Running::spawn("grpc-cut-drained", CLIENT_GRPC, &argv);
    client.wait_for_line(|l| l.starts_with("#1: pod-a")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drained.stop().await;
    cut_call(&client.finish().await, "drain timeout");
}

/// Issue 14, item 4: stdout piped into a reader that does not read. The
/// client used to queue every line in memory (18 → 180 MB in 30 s) and
/// ignore SIGINT until the pipe drained; now the callers wait for the
/// output, memory stays flat, and SIGINT ends it within the grace.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_stdout_keeps_memory_flat_and_sigint_still_ends_the_client() {
    let server = TestServer::start("pod-a").await;
    let host = server.grpc.to_string();
    common::assert_blocked_stdout_is_bounded_and_sigint_ends_it(
        "grpc-blocked-stdout",
        CLIENT_GRPC,
        &["--host", &host, "--interval", "0", "--concurrency", "32"],
    )
    .await;
}

/// The Go demo's server: getInfo answers the pod name and nothing else.
struct GoDemo;

#[tonic::async_trait]
impl proto::Pod for GoDemo {
    async fn get_info(
        &self,
        _: tonic::Request<proto::InfoRequest>,
    ) -> Result<tonic::Response<proto::InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::InfoResponse {
            name: "go-pod".into(),
            ..Default::default()
        }))
    }
}

/// Issue 13, section 5: against a server that reports no connection facts
/// the lines are exactly `#N: <pod>` and the summary says `n/a` (JSON
/// `null`), not a false `0 distinct`.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_connection_facts_gives_bare_lines_and_n_a() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let _server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::PodServer::new(GoDemo))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let out = run_client(
        "grpc-go-demo",
        CLIENT_GRPC,
        &["--host", &host, "--count", "2", "--interval", "0"],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.calls(), ["#1: go-pod", "#2: go-pod"]);
    assert!(
        out.last_summary()
            .ends_with("  connections: n/a (the server does not report them)\n"),
        "{}",
        out.stdout
    );

    let out = run_client(
        "grpc-go-demo-json",
        CLIENT_GRPC,
        &["--host", &host, "--count", "2", "--interval", "0", "--json"],
    )
    .await;
    let lines = out.json();
    assert_eq!(lines[0]["pod"], "go-pod");
    assert!(lines[0].get("conn_requests").is_none(), "{}", lines[0]);
    let summary = &lines[2]["summary"];
    assert_eq!(summary["connections"], serde_json::Value::Null, "{summary}");
    assert_eq!(
        summary["max_connection_requests"],
        serde_json::Value::Null,
        "{summary}"
    );
}

/// A server with a short maximum connection age sends GOAWAY while calls
/// are in flight (3 at a time, each held 50 ms). hyper fails a call handed
/// to the GOAWAY'd connection without sending it (hyperium/hyper#2500;
/// `CANCELLED operation was canceled` for a plain tonic client): client-grpc
/// sends such a call again, so none fails, and the calls move to new
/// connections as the age passes.
#[tokio::test(flavor = "multi_thread")]
async fn calls_a_goaway_left_unsent_are_sent_again_and_none_fails() {
    let mut config = server::Config::local("pod-aged");
    config.max_connection_age = Some(Duration::from_millis(150));
    let server = TestServer::start_with(config).await;
    let host = server.grpc.to_string();
    let out = run_client(
        "grpc-goaway-resend",
        CLIENT_GRPC,
        &[
            "--host",
            &host,
            "--count",
            "90",
            "--concurrency",
            "3",
            "--delay",
            "50ms",
            "--interval",
            "0",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let lines = out.json();
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["errors"], 0, "{}", out.stdout);
    assert_eq!(summary["ok"], 90, "{summary}");
    // About 1.5 s of calls at a 150 ms age: many connections, not one.
    assert!(summary["connections"].as_u64().unwrap() >= 4, "{summary}");
    server.stop().await;
}

/// A TCP relay to `upstream` whose first connection goes silent `after` it
/// opens: it stays open but passes nothing either way, as a connection to a
/// node that vanished (no FIN, no RST). Later connections relay as usual.
async fn relay_whose_first_connection_goes_silent(
    upstream: SocketAddr,
    after: Duration,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut down, _)) = listener.accept().await {
            let goes_silent = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let relay = tokio::io::copy_bidirectional(&mut down, &mut up);
                if goes_silent {
                    let _ = tokio::time::timeout(after, relay).await;
                    // Both ends held open, nothing read or written.
                    std::future::pending::<()>().await;
                } else {
                    let _ = relay.await;
                }
            });
        }
    });
    addr
}

fn code(call: &Value) -> &str {
    call["code"].as_str().unwrap_or("")
}

/// `client-grpc --json` with `args` (after `--host`) through a relay whose
/// first connection goes silent 400 ms in: its output, and its call records
/// (the summary line left off).
async fn through_a_relay_that_goes_silent(
    name: &str,
    args: &[&str],
) -> (common::Output, Vec<Value>) {
    let server = TestServer::start("pod-a").await;
    let relay =
        relay_whose_first_connection_goes_silent(server.grpc, Duration::from_millis(400)).await;
    let host = relay.to_string();
    let mut all = vec!["--host", &host, "--json"];
    all.extend_from_slice(args);
    let out = run_client(name, CLIENT_GRPC, &all).await;
    let mut calls = out.json();
    calls.pop();
    (out, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keepalive_a_silent_connection_is_never_left() {
    // gRPC's default: nothing notices a peer that vanished, so every call
    // on its connection waits out its deadline, to the end.
    let (out, calls) = through_a_relay_that_goes_silent(
        "grpc-silent-no-keepalive",
        &["--count", "8", "--interval", "100ms", "--timeout", "300ms"],
    )
    .await;
    assert_eq!(calls.len(), 8, "{}", out.stdout);
    let first_failure = calls
        .iter()
        .position(|c| c["ok"] == false)
        .expect("a call failed");
    assert!(first_failure >= 1, "{}", out.stdout);
    for call in &calls[first_failure..] {
        assert_eq!(code(call), "DEADLINE_EXCEEDED", "{}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_closes_a_silent_connection_and_the_client_reconnects() {
    let (out, calls) = through_a_relay_that_goes_silent(
        "grpc-silent-keepalive",
        &[
            "--count",
            "12",
            "--interval",
            "100ms",
            "--timeout",
            "2s",
            "--keepalive-time",
            "100ms",
            "--keepalive-timeout",
            "100ms",
        ],
    )
    .await;
    assert!(
        out.stderr.contains("keepalive 100ms (timeout 100ms)"),
        "{}",
        out.stderr
    );
    assert_eq!(calls.len(), 12, "{}", out.stdout);
    let failed: Vec<&Value> = calls.iter().filter(|c| c["ok"] == false).collect();
    assert!(!failed.is_empty(), "no call failed: {}", out.stdout);
    for call in &failed {
        // Failed by the closed connection, well before the 2 s deadline.
        assert_ne!(code(call), "DEADLINE_EXCEEDED", "{}", out.stdout);
        assert!(
            call["latency_us"].as_u64().unwrap() < 1_000_000,
            "{}",
            out.stdout
        );
    }
    // Then a new connection (the server's count starts again), and answers.
    let last = calls.last().unwrap();
    assert_eq!(last["ok"], true, "{}", out.stdout);
    // At least the silent one and a new one (a PING starved on a busy
    // machine may close a healthy connection too).
    let summary = out.json().pop().unwrap();
    let connections = summary["summary"]["connections"].as_u64().unwrap();
    assert!(connections >= 2, "{}", out.stdout);
}
