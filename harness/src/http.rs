//! The one HTTP client of the tests and tools, on hyper: HTTP/1.1 requests
//! here (Envoy's admin API, plain-HTTP checks through a listener, a server's
//! `/healthz`), HTTP/2 cleartext gRPC-shaped calls in [`h2c`]. hyper does the
//! framing (lengths, chunks, trailers); nothing here parses HTTP by hand.
//!
//! Async callers use [`request_async`]/[`get_async`]; sync callers (tests
//! with no runtime, the Envoy launcher, the mesh) the blocking [`request`]/
//! [`get`], which run the same future on a runtime of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Error, Result};

pub mod h2c;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// In arrival order, names lowercased; repeated headers stay repeated.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Every value of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`, if present exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_values(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// `GET path` on `addr`, one request per connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    request(addr, "GET", path, &[], timeout)
}

/// One request with extra headers, one connection, read to the end.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    block_on(request_async(addr, method, path, headers, timeout))?
}

/// [`get`], for async callers.
pub async fn get_async(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    request_async(addr, "GET", path, &[], timeout).await
}

/// [`request`], for async callers: `timeout` bounds the whole exchange.
pub async fn request_async(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let what = format!("{method} http://{addr}{path}");
    tokio::time::timeout(timeout, exchange(addr, method, path, headers, &what))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("an answer to {what}"),
            timeout,
            log: None,
        })?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    what: &str,
) -> Result<Response> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io(format!("connect for {what}"), e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_error(what, &e))?;
    // Drives the connection until the response is read; with
    // `Connection: close` it then ends by itself.
    let driver = tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("connection", "close");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Http(format!("cannot build {what}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_error(what, &e))?;
    let status = response.status().as_u16();
    let headers = header_list(response.headers());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http_error(what, &e))?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn http_error(what: &str, e: &hyper::Error) -> Error {
    Error::Http(format!("{what}: {e}"))
}

/// `headers` as (lowercase name, value) pairs, repeated names repeated.
pub(crate) fn header_list(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).trim().to_owned(),
            )
        })
        .collect()
}

/// Runs `future` to completion for a sync caller: on a current-thread
/// runtime of its own, or, called from inside a runtime (which cannot block
/// on another), on a thread of its own.
pub(crate) fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
            .map_err(|e| Error::io("start a runtime for an HTTP client", e))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|scope| match scope.spawn(run).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A server that answers one connection with `raw`, then closes it.
    fn answering(raw: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(raw);
        });
        addr
    }

    fn fetch(raw: &'static [u8]) -> Result<Response> {
        get(answering(raw), "/", TIMEOUT)
    }

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let cases: &[(&'static [u8], u16, &str)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello+junk", 200, "hello"),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
                503,
                "wikipedia",
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\nto the end", 404, "to the end"),
        ];
        for (raw, status, body) in cases {
            let r = fetch(raw).unwrap();
            assert_eq!((r.status, r.body.as_str()), (*status, *body));
        }
    }

    #[test]
    fn repeated_headers_are_kept() {
        let r = fetch(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-B:  3 \r\n\r\n").unwrap();
        assert_eq!(r.header_values("x-a"), ["1", "2"]);
        assert_eq!(r.header("x-a"), None);
        assert_eq!(r.header("X-B"), Some("3"));
    }

    #[test]
    fn malformed_responses_are_errors() {
        for raw in [
            &b"garbage"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        ] {
            assert!(fetch(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn works_from_inside_a_runtime_and_names_what_timed_out() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let r = runtime
            .block_on(async { fetch(b"HTTP/1.1 204 No Content\r\n\r\n") })
            .unwrap();
        assert_eq!(r.status, 204);
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let err = get(addr, "/ready", Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(err, Error::Timeout { .. }) && err.to_string().contains("/ready"),
            "{err}"
        );
    }
}
