//! `client-http` as a real process against the real echo server.

mod common;

use common::{CLIENT_HTTP, Running, TestServer, closed_port, run_client, split_call};

#[tokio::test(flavor = "multi_thread")]
async fn default_opens_a_new_connection_per_call_as_the_go_demo() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/pod", server.http);
    let out = run_client(
        "http-default",
        CLIENT_HTTP,
        &["--url", &url, "--count", "3", "--interval", "0"],
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
    let summary = out.last_summary();
    assert!(
        summary.starts_with("--- summary: 3 calls, 3 ok, 0 errors\n"),
        "{summary}"
    );
    assert!(
        summary.contains("connections: 3 distinct, max requests on one: 1"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_reuses_one_connection() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/pod", server.http);
    let out = run_client(
        "http-keepalive",
        CLIENT_HTTP,
        &[
            "--url",
            &url,
            "--keepalive",
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
            "#2: pod-a conn-requests=2",
            "#3: pod-a conn-requests=3"
        ]
    );
    assert!(
        out.last_summary()
            .contains("connections: 1 distinct, max requests on one: 3")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_reconnects_after_the_server_goes_away() {
    let first = TestServer::start("pod-a").await;
    let addr = first.http;
    let url = format!("http://{addr}/pod");
    let mut client = Running::spawn(
        "http-keepalive-restart",
        CLIENT_HTTP,
        &["--url", &url, "--keepalive", "--interval", "20ms"],
    );
    client
        .wait_for_line(|l| l.ends_with("pod-a conn-requests=2"))
        .await;
    first.stop().await;
    client.wait_for_line(|l| l.contains(": error: ")).await;
    let mut config = server::Config::local("pod-b");
    config.http_addr = addr;
    let _second = TestServer::start_with(config).await;
    client
        .wait_for_line(|l| l.ends_with("pod-b conn-requests=1"))
        .await;
    client
        .wait_for_line(|l| l.ends_with("pod-b conn-requests=2"))
        .await;
    let out = client.signal_and_finish("TERM").await;
    assert!(out.status.success(), "{:?}", out.status);
    let summary = out.last_summary();
    assert!(
        summary.contains("  pod-a ") && summary.contains("  pod-b "),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_parse() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/pod", server.http);
    let out = run_client(
        "http-json",
        CLIENT_HTTP,
        &[
            "--url",
            &url,
            "--count",
            "2",
            "--interval",
            "0",
            "--json",
            "--keepalive",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let lines = out.json();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0]["n"], 1);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["pod"], "pod-a");
    assert_eq!(lines[1]["conn_requests"], 2);
    // Without a JSON body, the peer is our own end of the connection.
    assert_eq!(lines[0]["peer"], lines[1]["peer"]);
    assert_eq!(lines[2]["summary"]["pods"]["pod-a"], 2);
    assert_eq!(lines[2]["summary"]["connections"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_echo_endpoint_works_too() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/", server.http);
    let out = run_client(
        "http-echo",
        CLIENT_HTTP,
        &["--url", &url, "--count", "2", "--interval", "0", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let lines = out.json();
    assert_eq!(lines[0]["pod"], "pod-a");
    assert_eq!(lines[1]["conn_requests"], 1);
    assert!(lines[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_server_gives_connect_errors_and_a_failing_exit() {
    let url = format!("http://{}/pod", closed_port());
    let out = run_client(
        "http-dead",
        CLIENT_HTTP,
        &["--url", &url, "--count", "3", "--interval", "10ms"],
    )
    .await;
    let calls = out.calls();
    assert_eq!(calls.len(), 3, "{}", out.stdout);
    for (i, line) in calls.iter().enumerate() {
        let (n, rest) = split_call(line);
        assert_eq!(n, i as u64 + 1);
        assert!(
            rest.starts_with("error: CONNECT ") && rest.contains("refused"),
            "{line}"
        );
    }
    assert!(
        out.last_summary()
            .starts_with("--- summary: 3 calls, 0 ok, 3 errors")
    );
    assert_eq!(
        out.summary_row("error CONNECT"),
        Some((3, "100.0%".into())),
        "{}",
        out.stdout
    );
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_error_statuses_are_errors_with_their_code() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/no-such-path", server.http);
    let out = run_client(
        "http-404",
        CLIENT_HTTP,
        &["--url", &url, "--count", "2", "--interval", "0"],
    )
    .await;
    assert_eq!(
        out.calls(),
        [
            "#1: error: HTTP_404 Not Found conn-requests=1",
            "#2: error: HTTP_404 Not Found conn-requests=1"
        ]
    );
    assert!(out.last_summary().contains("error HTTP_404"));
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tags_on_http_responses_are_printed() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/pod", server.http);
    let echo = proto::ECHO_RESPONSE_HEADER;
    let out = run_client(
        "http-tags",
        CLIENT_HTTP,
        &[
            "--url",
            &url,
            "--count",
            "1",
            "-H",
            &format!("{echo}: x-upstream-pod=sidecar-pod"),
            "-H",
            &format!("{echo}: x-upstream-connection-requests=5"),
        ],
    )
    .await;
    assert_eq!(
        out.calls(),
        ["#1: pod-a conn-requests=1 x-upstream-pod=sidecar-pod x-upstream-connection-requests=5"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_urls_give_one_line_and_exit_64() {
    for (url, mentions) in [
        ("https://server/pod", "TLS"),
        ("server:80/pod", "http://"),
        ("http://", "invalid URL"),
    ] {
        let out = run_client("http-bad-url", CLIENT_HTTP, &["--url", url]).await;
        assert_eq!(out.status.code(), Some(64), "{url}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{url}: {}", out.stderr);
        assert!(out.stderr.contains(mentions), "{url}: {}", out.stderr);
    }
}

/// Issue 14, item 4, for `client-http` too (it shares the output loop with
/// `client-grpc`): stdout piped into a reader that never reads keeps memory
/// flat, and SIGINT still ends the client, with the summary on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_stdout_keeps_memory_flat_and_sigint_still_ends_the_client() {
    let server = TestServer::start("pod-a").await;
    let url = format!("http://{}/pod", server.http);
    common::assert_blocked_stdout_is_bounded_and_sigint_ends_it(
        "http-blocked-stdout",
        CLIENT_HTTP,
        &[
            "--url",
            &url,
            "--keepalive",
            "--interval",
            "0",
            "--concurrency",
            "16",
        ],
    )
    .await;
}
