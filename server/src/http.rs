//! HTTP side: `/pod` (plain pod name, as the Go demo), `/healthz`, and `/`
//! (a JSON echo of what the server saw).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use crate::{conn::ConnInfo, echo::parse_echo_header};

#[derive(Clone)]
pub struct HttpState {
    pub pod_name: Arc<str>,
    /// Cleared when draining starts, so readiness probes take the pod out.
    pub serving: Arc<AtomicBool>,
}

/// What the server knows about the connection a request came on; absent when
/// the app is driven without a real connection (tests via `oneshot`).
#[derive(Clone, Copy, Debug)]
struct Served {
    connection_requests: u64,
}

pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/pod", get(pod))
        .route("/healthz", get(healthz))
        .route("/", get(echo))
        .layer(middleware::from_fn(track_connection))
        .with_state(state)
}

async fn pod(State(state): State<HttpState>) -> String {
    state.pod_name.to_string()
}

async fn healthz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.serving.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

#[derive(Serialize)]
struct EchoBody {
    pod: String,
    peer: Option<String>,
    connection_requests: Option<u64>,
    method: String,
    uri: String,
    version: String,
    headers: BTreeMap<String, Vec<String>>,
}

async fn echo(State(state): State<HttpState>, request: Request) -> Json<EchoBody> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|ConnectInfo(conn)| conn.peer_text.to_string());
    let connection_requests = request
        .extensions()
        .get::<Served>()
        .map(|s| s.connection_requests);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        // Non-UTF-8 values are echoed lossily rather than rejected.
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Json(EchoBody {
        pod: state.pod_name.to_string(),
        peer,
        connection_requests,
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        version: format!("{:?}", request.version()),
        headers,
    })
}

/// Counts the request on its connection, exposes the count to handlers and
/// as a response header, and applies `x-echo-response-header`.
async fn track_connection(mut request: Request, next: Next) -> Response {
    let echo = match echo_headers(request.headers()) {
        Ok(echo) => echo,
        Err(message) => return (StatusCode::BAD_REQUEST, message + "\n").into_response(),
    };
    let served = request
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|ConnectInfo(conn)| Served {
            connection_requests: conn.next_request(),
        });
    if let Some(served) = served {
        request.extensions_mut().insert(served);
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(served) = served {
        headers.insert(
            proto::SERVER_CONNECTION_REQUESTS_HEADER,
            HeaderValue::from(served.connection_requests),
        );
    }
    for (name, value) in echo {
        headers.append(name, value);
    }
    response
}

fn echo_headers(headers: &HeaderMap) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    headers
        .get_all(proto::ECHO_RESPONSE_HEADER)
        .iter()
        .map(|raw| {
            let (name, value) = parse_echo_header(raw.as_bytes())?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid header value for {name}"))?;
            Ok((name, value))
        })
        .collect()
}
