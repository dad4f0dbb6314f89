//! HTTP/2 cleartext (h2c), gRPC-shaped: POSTs with `content-type:
//! application/grpc` and `te: trailers`, several on one connection, each
//! answer with its headers and its `grpc-status` (from the trailers, or from
//! the headers of a trailers-only response). The bench checks with it that a
//! configuration really does its work before it is measured, and drives the
//! connection churn with it (one request per fresh connection).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Request, body::Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// How long one connection's calls may take, in [`probe`] and [`churn`].
const CALL_DEADLINE: Duration = Duration::from_secs(10);

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

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Http(format!("{what}: {e}"))
}

/// `requests` sequential POSTs of `body` to `path` on one fresh connection.
pub async fn calls(
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
    requests: usize,
) -> Result<Vec<Answer>> {
    let what = format!("h2c POST http://{addr}{path}");
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io(format!("connect for {what}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io(format!("configure socket for {what}"), e))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| failed(&what, e))?;
    let driver = tokio::spawn(connection);
    let mut answers = Vec::with_capacity(requests);
    for _ in 0..requests {
        let request = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body.clone()))
            .map_err(|e| failed(&what, e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(&what, e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&what, e))?;
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
    driver
        .await
        .map_err(|e| failed(&what, e))?
        .map_err(|e| failed(&what, e))?;
    Ok(answers)
}

/// [`calls`] within [`CALL_DEADLINE`].
async fn calls_in_time(
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
    requests: usize,
) -> Result<Vec<Answer>> {
    tokio::time::timeout(CALL_DEADLINE, calls(addr, path, body, requests))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("an answer from {addr}{path}"),
            timeout: CALL_DEADLINE,
            log: None,
        })?
}

/// `requests` calls on one connection, then a second connection's first
/// call: enough to see per-connection ids and counts.
pub fn probe(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    requests: usize,
) -> Result<(Vec<Answer>, Answer)> {
    let body = Bytes::copy_from_slice(body);
    super::block_on(async {
        let first = calls_in_time(addr, path, &body, requests).await?;
        let mut second = calls_in_time(addr, path, &body, 1).await?;
        Ok((first, second.remove(0)))
    })?
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
) -> Result<Churn> {
    let body = Bytes::copy_from_slice(body);
    let next = Arc::new(AtomicU64::new(0));
    let tagged = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // Each connection has its own 10 s limit; the whole run one too, far above
    // a normal run (100,000 connections take about 30 s here).
    let overall = Duration::from_secs(120) + Duration::from_millis(connections.saturating_mul(5));
    let result: Result<()> = super::block_on(async {
        let run = async {
            let mut tasks = Vec::new();
            for _ in 0..parallel.max(1) {
                let (next, tagged, done, body) =
                    (next.clone(), tagged.clone(), done.clone(), body.clone());
                let (path, tag_header) = (path.to_owned(), tag_header.to_owned());
                tasks.push(tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < connections {
                        let answers = calls_in_time(addr, &path, &body, 1).await?;
                        let answer = &answers[0];
                        if answer.status != 200 {
                            return Err(Error::Http(format!(
                                "churn request answered HTTP {}",
                                answer.status
                            )));
                        }
                        if answer.headers.contains_key(tag_header.as_str()) {
                            tagged.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }));
            }
            for task in tasks {
                task.await.map_err(|e| failed("a churn task", e))??;
            }
            Ok(())
        };
        tokio::time::timeout(overall, run)
            .await
            .map_err(|_| Error::Timeout {
                what: "the churn".into(),
                timeout: overall,
                log: None,
            })?
    })?;
    let outcome = Churn {
        connections: done.load(Ordering::Relaxed),
        failed: connections.saturating_sub(done.load(Ordering::Relaxed)),
        tagged: tagged.load(Ordering::Relaxed),
    };
    result.map_err(|e| {
        Error::Http(format!(
            "churn against {addr} stopped after {} connections: {e}",
            outcome.connections
        ))
    })?;
    Ok(outcome)
}
