//! `client-http`: GETs a URL in a loop, as the Go demo: a new TCP connection
//! per call by default (so kube-proxy balances every call), `--keepalive` to
//! reuse one. Plain HTTP/1.1 over our own `TcpStream`, so which connection a
//! call uses is exactly what the flags say.

use std::{future::Future, io::Write, net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    HeaderMap, Request, Uri,
    body::Bytes,
    client::conn::http1::{self, SendRequest},
    header::{self, HeaderValue},
    http::uri::PathAndQuery,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{
    calling_loop::{self, Caller, LoopConfig},
    cli::LoopArgs,
    duration::format_duration,
    record::{Call, error_text, header_value, one_line, tags_from_headers},
    summary::Summary,
};

/// Bodies are a pod name or a small JSON echo; anything bigger is not ours.
const MAX_BODY: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "client-http",
    version,
    about = "GETs a URL in a loop and prints which pod answered: `#N: <pod> ...`"
)]
pub struct Args {
    /// Server URL, e.g. http://server:80/pod (plain HTTP: in a mesh the
    /// sidecar does mTLS).
    #[arg(long, env = "CLIENT_URL", value_name = "URL")]
    pub url: String,

    /// Reuse one connection (per caller) instead of a new one per call;
    /// reconnects when the server closes it.
    #[arg(long, env = "CLIENT_KEEPALIVE", value_parser = clap::builder::BoolishValueParser::new())]
    pub keepalive: bool,

    #[command(flatten)]
    pub common: LoopArgs,
}

impl Args {
    pub fn config(&self) -> Result<(Config, LoopConfig), String> {
        let config = Config {
            target: Target::parse(&self.url)?,
            keepalive: self.keepalive,
            concurrency: self.common.concurrency,
            timeout: self.common.timeout,
            headers: self.common.headers.iter().cloned().collect(),
        };
        Ok((config, self.common.loop_config()?))
    }

    pub fn describe(&self) -> String {
        format!(
            "client-http: url {}, {}, {}",
            self.url,
            if self.keepalive {
                "keep-alive"
            } else {
                "new connection per call"
            },
            self.common.describe()
        )
    }
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to (port 80 when the URL has none).
    pub connect: String,
    /// The `Host` header: the URL's authority as written.
    pub host: HeaderValue,
    /// The request target (origin form: path and query).
    pub path: Uri,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|_| format!("invalid URL {raw:?} (e.g. http://server:80/pod)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{raw:?}: TLS is not supported; in a mesh the sidecar does mTLS, use http://"
                ));
            }
            _ => return Err(format!("URL {raw:?} must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {raw:?} has no host"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("URL {raw:?} has an invalid host"))?;
        Ok(Self {
            connect: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host,
            path: Uri::from(
                uri.path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            ),
        })
    }
}

/// Everything the HTTP callers need, as a plain struct tests build directly.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub keepalive: bool,
    pub concurrency: u32,
    pub timeout: Duration,
    /// Extra request headers.
    pub headers: HeaderMap,
}

/// Runs the loop as configured until `count` or `shutdown`.
pub async fn run(
    config: Config,
    loop_config: &LoopConfig,
    out: impl Write + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let concurrency = config.concurrency;
    let config = Arc::new(config);
    let callers = (0..concurrency)
        .map(|_| HttpCaller {
            config: config.clone(),
            conn: None,
        })
        .collect();
    calling_loop::run(loop_config, callers, out, shutdown).await
}

pub struct HttpCaller {
    config: Arc<Config>,
    /// The kept connection (`--keepalive` only).
    conn: Option<Conn>,
}

struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    local: SocketAddr,
}

impl Caller for HttpCaller {
    async fn call(&mut self) -> Call {
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(call) => call,
            Err(_) => {
                // Whatever state that connection is in, do not reuse it.
                self.conn = None;
                Call::error(
                    "TIMEOUT",
                    format!("no response within {}", format_duration(timeout)),
                )
            }
        }
    }
}

impl HttpCaller {
    fn request(&self) -> Request<Empty<Bytes>> {
        let config = &self.config;
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = config.target.path.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, config.target.host.clone());
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("grpc-lb-client-http/", env!("CARGO_PKG_VERSION"))),
        );
        if !config.keepalive {
            // As Go's DisableKeepAlives: the server closes after answering.
            request
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // `-H` wins over the defaults above (one Host, never two: proxies
        // answer a duplicate Host with 400); repeated `-H` names all go out.
        let headers = request.headers_mut();
        for name in config.headers.keys() {
            headers.remove(name);
        }
        for (name, value) in &config.headers {
            headers.append(name, value.clone());
        }
        request
    }

    async fn exchange(&mut self) -> Call {
        let kept = self.conn.take().filter(|conn| !conn.sender.is_closed());
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(conn) => conn,
            None => match self.connect().await {
                Ok(conn) => conn,
                Err(call) => return call,
            },
        };
        if conn.sender.ready().await.is_err() {
            // The server closed the kept connection since the last call.
            conn = match self.connect().await {
                Ok(conn) => conn,
                Err(call) => return call,
            };
        }

        let mut result = conn.sender.send_request(self.request()).await;
        if reused && matches!(&result, Err(e) if e.is_canceled()) {
            // The kept connection closed as we sent: the request never left,
            // so send it on a new one (as Go's and hyper-util's clients do).
            log::debug!("kept connection closed under the request; reconnecting");
            conn = match self.connect().await {
                Ok(conn) => conn,
                Err(call) => return call,
            };
            result = conn.sender.send_request(self.request()).await;
        }
        let response = match result {
            Ok(response) => response,
            Err(e) => return Call::error("IO", error_text("request", Some(&e))),
        };
        let (parts, body) = response.into_parts();
        let tags = tags_from_headers(&parts.headers);
        let conn_requests = header_value(&parts.headers, proto::SERVER_CONNECTION_REQUESTS_HEADER)
            .and_then(|v| v.trim().parse().ok());
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let why = if e.is::<http_body_util::LengthLimitError>() {
                    format!("response body over {} KiB: not a pod name", MAX_BODY / 1024)
                } else {
                    format!("reading the response body: {e}")
                };
                return Call::error("IO", why).with_tags(tags);
            }
        };
        let local = conn.local;
        // A server (or proxy at its request limit) that says it will close is
        // not worth racing: reconnect next time.
        let closing = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if self.config.keepalive && !closing {
            self.conn = Some(conn);
        }

        let mut call = if parts.status.is_success() {
            answer(&parts.headers, &body)
        } else {
            let reason = parts.status.canonical_reason().unwrap_or("");
            let text = String::from_utf8_lossy(&body);
            let first = one_line(text.lines().next().unwrap_or(""));
            let message = match (reason, first.as_str()) {
                (r, "") => r.to_owned(),
                ("", b) => b.to_owned(),
                (r, b) => format!("{r}: {}", truncate(b, 200)),
            };
            Call::error(format!("HTTP_{}", parts.status.as_u16()), message)
        };
        call.tags = tags;
        call.conn_requests = call.conn_requests.or(conn_requests);
        call.peer = call.peer.or_else(|| Some(local.to_string()));
        call
    }

    async fn connect(&self) -> Result<Conn, Call> {
        let target = &self.config.target.connect;
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| Call::error("CONNECT", format!("{target}: {e}")))?;
        // Small request/response pairs: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(|e| Call::error("CONNECT", format!("{target}: {e}")))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Call::error("CONNECT", error_text(target, Some(&e))))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("connection from {local} ended: {e}");
            }
        });
        Ok(Conn { sender, local })
    }
}

/// The pod from a 2xx body: `/pod`'s plain text, or `/`'s JSON echo (which
/// also says the peer and the per-connection count).
fn answer(headers: &HeaderMap, body: &[u8]) -> Call {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json
        && let Ok(echo) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(pod) = echo["pod"].as_str()
    {
        let mut call = Call::ok(pod);
        call.peer = echo["peer"].as_str().map(str::to_owned);
        call.conn_requests = echo["connection_requests"].as_u64();
        return call;
    }
    let text = one_line(&String::from_utf8_lossy(body));
    Call::ok(if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    })
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gives_connect_address_host_header_and_path() {
        let t = Target::parse("http://server:8080/pod?x=1").unwrap();
        assert_eq!(t.connect, "server:8080");
        assert_eq!(t.host, "server:8080");
        assert_eq!(t.path, "/pod?x=1");
        let t = Target::parse("http://server").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.to_string().as_str()),
            ("server:80", "/")
        );
        assert_eq!(t.host, "server");
        assert_eq!(
            Target::parse("http://[::1]:81/").unwrap().connect,
            "[::1]:81"
        );
    }

    #[test]
    fn url_must_be_plain_http_with_a_host() {
        for raw in [
            "https://server/pod",
            "server:80/pod",
            "/pod",
            "",
            "ftp://x/",
        ] {
            assert!(Target::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn plain_and_json_bodies_name_the_pod() {
        let plain = answer(&HeaderMap::new(), b"server-0\n");
        assert_eq!(plain.outcome, Ok("server-0".into()));
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let call = answer(
            &json,
            br#"{"pod":"server-1","peer":"1.2.3.4:5","connection_requests":4}"#,
        );
        assert_eq!(call.outcome, Ok("server-1".into()));
        assert_eq!(call.peer.as_deref(), Some("1.2.3.4:5"));
        assert_eq!(call.conn_requests, Some(4));
        assert_eq!(
            answer(&HeaderMap::new(), b"").outcome,
            Ok("(empty body)".into())
        );
    }

    #[test]
    fn extra_headers_replace_defaults_and_repeat_their_own() {
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("api.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let caller = HttpCaller {
            config: Arc::new(Config {
                target: Target::parse("http://server:80/pod").unwrap(),
                keepalive: false,
                concurrency: 1,
                timeout: Duration::from_secs(1),
                headers,
            }),
            conn: None,
        };
        let request = caller.request();
        let sent = request.headers();
        let hosts: Vec<_> = sent.get_all(header::HOST).iter().collect();
        assert_eq!(hosts, ["api.example"]);
        let xa: Vec<_> = sent.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(sent[header::CONNECTION], "close");
        assert!(sent.contains_key(header::USER_AGENT));
    }

    #[test]
    fn long_error_bodies_are_cut() {
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
