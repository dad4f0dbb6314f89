//! The HTTP side: the router alone (oneshot) and the real server over TCP.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Bytes};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tower::ServiceExt;

fn app() -> axum::Router {
    server::http_app(server::HttpState {
        pod_name: "server-abc".into(),
        serving: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    })
}

async fn body_text(response: hyper::Response<axum::body::Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn pod_answers_the_plain_pod_name() {
    let response = app()
        .oneshot(
            Request::get("/pod")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "server-abc");
}

#[tokio::test]
async fn healthz_is_ok_while_serving() {
    let response = app()
        .oneshot(
            Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_bad_echo_headers_get_http_errors() {
    let missing = app()
        .oneshot(
            Request::get("/nope")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let bad_echo = app()
        .oneshot(
            Request::get("/pod")
                .header(proto::ECHO_RESPONSE_HEADER, "Bad Name=x")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bad_echo.status(), StatusCode::BAD_REQUEST);
}

/// One keep-alive HTTP/1.1 connection to the real server.
async fn http1(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET /pod` on `conn` with `headers` added.
async fn get_pod(
    conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    headers: &[(&str, &str)],
) -> hyper::Response<hyper::body::Incoming> {
    let mut request = Request::get("/pod").header("host", "x");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    conn.send_request(request.body(Empty::new()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn real_server_counts_requests_per_connection_and_echoes() {
    let server = server::Server::bind(server::Config::local("server-abc"))
        .await
        .unwrap();
    let addr = server.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let mut conn = http1(addr).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let response = get_pod(&mut conn, &[]).await;
        counts.push(
            response.headers()[proto::SERVER_CONNECTION_REQUESTS_HEADER]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"server-abc");
    }
    assert_eq!(counts, ["1", "2", "3"]);

    // Echoing a framing header would desynchronize the connection (and trip
    // hyper's length assertion): refused with 400, and the same keep-alive
    // connection still answers correctly afterwards.
    let refused = get_pod(
        &mut conn,
        &[(proto::ECHO_RESPONSE_HEADER, "content-length=1")],
    )
    .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let message = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&message).contains("transport owns"),
        "{message:?}"
    );
    let after = get_pod(&mut conn, &[]).await;
    assert_eq!(after.status(), StatusCode::OK);
    let body = after.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"server-abc");

    // `/` on a fresh connection: JSON with the peer, count 1 and our headers,
    // non-UTF-8 values echoed lossily.
    let mut fresh = http1(addr).await;
    let response = fresh
        .send_request(
            Request::get("/")
                .header("host", "x")
                .header("x-demo", &b"caf\xe9"[..])
                .header(proto::ECHO_RESPONSE_HEADER, "x-upstream-pod=evil")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream-pod"], "evil");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["pod"], "server-abc");
    assert_eq!(json["connection_requests"], 1);
    assert!(json["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(json["headers"]["x-demo"][0], "caf\u{fffd}");

    // Malformed HTTP gets a 400, not a hang or a crash.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GARBAGE \x00\xff HTTP/9.9\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("server answers garbage promptly")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The max connection age is the gRPC port's: a keep-alive HTTP connection
/// outlives age + grace.
#[tokio::test]
async fn max_connection_age_leaves_the_http_port_alone() {
    let mut config = server::Config::local("server-abc");
    config.max_connection_age = Some(Duration::from_millis(200));
    config.max_connection_age_grace = Some(Duration::from_millis(200));
    let server = server::Server::bind(config).await.unwrap();
    let addr = server.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let mut conn = http1(addr).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let response = get_pod(&mut conn, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        counts.push(response.headers()[proto::SERVER_CONNECTION_REQUESTS_HEADER].clone());
        response.into_body().collect().await.unwrap();
        // 3 x 300ms: well past age + grace by the last request.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(counts, ["1", "2", "3"], "one connection throughout");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
