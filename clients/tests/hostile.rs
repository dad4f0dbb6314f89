//! Both clients against peers that are not well-behaved servers: garbage
//! bytes, a connection closed at once, a body far past the limit. Every call
//! must end in one `#N: error: ...` line, the loop goes on, the summary
//! counts them, and the process exits 1 (every call failed), never hangs or
//! panics.

mod common;

use std::net::SocketAddr;

use common::{CLIENT_GRPC, CLIENT_HTTP, run_client, split_call};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A listener that answers every connection with `reply` (after reading
/// what the client sent first), then closes it.
async fn peer(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    stream.read(&mut buf),
                )
                .await;
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Runs `bin` with `target` (its address flags) for three calls and checks
/// that each failed on its own line, the summary counts them, and the exit
/// is 1 without a panic.
async fn every_call_fails(name: &str, bin: &str, target: &[&str]) -> common::Output {
    let mut args = target.to_vec();
    args.extend(["--count", "3", "--interval", "10ms", "--timeout", "2s"]);
    let out = run_client(name, bin, &args).await;
    let lines = out.calls();
    assert_eq!(
        lines.len(),
        3,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    for (i, line) in lines.iter().enumerate() {
        let (n, rest) = split_call(line);
        assert_eq!(n, i as u64 + 1, "{line}");
        assert!(rest.starts_with("error: "), "{line}");
    }
    assert!(
        out.last_summary()
            .starts_with("--- summary: 3 calls, 0 ok, 3 errors"),
        "{}",
        out.stdout
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

const GARBAGE: &[u8] = b"\x00\xff\x13garbage that is neither HTTP/1.1 nor HTTP/2\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn grpc_client_survives_garbage_and_closed_connections() {
    for (name, reply) in [("garbage", GARBAGE), ("closed", &b""[..])] {
        let addr = peer(reply).await.to_string();
        for mode in ["reuse", "per-call"] {
            let target = ["--host", &addr, "--mode", mode];
            every_call_fails(&format!("grpc-{name}-{mode}"), CLIENT_GRPC, &target).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_client_survives_garbage_closed_connections_and_huge_bodies() {
    // 1 MiB promised and sent: far past the client's 64 KiB limit.
    let mut huge =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    huge.resize(huge.len() + 1_048_576, b'x');
    let huge: &'static [u8] = huge.leak();
    for (name, reply) in [("garbage", GARBAGE), ("closed", &b""[..]), ("huge", huge)] {
        let url = format!("http://{}/pod", peer(reply).await);
        let out = every_call_fails(&format!("http-{name}"), CLIENT_HTTP, &["--url", &url]).await;
        if name == "huge" {
            assert!(
                out.calls()[0].contains("over 64 KiB"),
                "the limit is named: {}",
                out.calls()[0]
            );
        }
    }
}
