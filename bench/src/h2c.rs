//! A minimal h2c (HTTP/2 cleartext) client: checks that a configuration
//! really does its work before it is measured, and drives the connection
//! churn (one gRPC-shaped request per fresh connection).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Request, body::Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// What came back for one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// `grpc-status` from the trailers, or from the headers of a
    /// trailers-only response.
    pub grpc_status: Option<String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn request(addr: SocketAddr, path: &str, body: &Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body.clone()))?)
}

/// `requests` sequential calls on one fresh connection.
async fn calls(
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
    requests: usize,
) -> anyhow::Result<Vec<Answer>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut answers = Vec::with_capacity(requests);
    for _ in 0..requests {
        let response = sender.send_request(request(addr, path, body)?).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        answers.push(Answer {
            status,
            headers,
            grpc_status,
        });
    }
    // Dropping the last sender lets the connection close cleanly.
    drop(sender);
    driver.await??;
    Ok(answers)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `requests` calls on one connection, then a second connection's first
/// call: enough to see per-connection ids and counts.
pub fn probe(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    requests: usize,
) -> anyhow::Result<(Vec<Answer>, Answer)> {
    let body = Bytes::copy_from_slice(body);
    runtime()?.block_on(async {
        let deadline = Duration::from_secs(10);
        let first = tokio::time::timeout(deadline, calls(addr, path, &body, requests))
            .await
            .with_context(|| format!("no answer from {addr} within {deadline:?}"))??;
        let mut second = tokio::time::timeout(deadline, calls(addr, path, &body, 1))
            .await
            .with_context(|| format!("no answer from {addr} within {deadline:?}"))??;
        Ok((first, second.remove(0)))
    })
}

/// Result of a churn run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Churn {
    pub connections: u64,
    pub failed: u64,
    /// Answers carrying `tag_header`.
    pub tagged: u64,
}

/// `connections` fresh connections, `parallel` at a time, one request each.
/// Stops at the first error after counting it (a broken Envoy is not
/// something to measure).
pub fn churn(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    connections: u64,
    parallel: u64,
    tag_header: &str,
) -> anyhow::Result<Churn> {
    let body = Bytes::copy_from_slice(body);
    let next = Arc::new(AtomicU64::new(0));
    let tagged = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // Each connection has its own 10 s limit; the whole run one too, far above
    // a normal run (100,000 connections take about 30 s here).
    let overall = Duration::from_secs(120) + Duration::from_millis(connections.saturating_mul(5));
    let result: anyhow::Result<()> = runtime()?.block_on(async {
        let run = async {
            let mut tasks = Vec::new();
            for _ in 0..parallel.max(1) {
                let (next, tagged, done, body) =
                    (next.clone(), tagged.clone(), done.clone(), body.clone());
                let (path, tag_header) = (path.to_owned(), tag_header.to_owned());
                tasks.push(tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < connections {
                        let answers = tokio::time::timeout(
                            Duration::from_secs(10),
                            calls(addr, &path, &body, 1),
                        )
                        .await
                        .context("a churn connection got no answer within 10s")??;
                        let answer = &answers[0];
                        if answer.status != 200 {
                            bail!("churn request answered HTTP {}", answer.status);
                        }
                        if answer.headers.contains_key(tag_header.as_str()) {
                            tagged.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok(())
        };
        tokio::time::timeout(overall, run)
            .await
            .with_context(|| format!("the churn did not finish within {overall:?}"))?
    });
    let outcome = Churn {
        connections: done.load(Ordering::Relaxed),
        failed: connections.saturating_sub(done.load(Ordering::Relaxed)),
        tagged: tagged.load(Ordering::Relaxed),
    };
    result.with_context(|| {
        format!(
            "churn against {addr} stopped after {} connections",
            outcome.connections
        )
    })?;
    Ok(outcome)
}
