//! Response header names: the one definition every crate imports (filter,
//! server, clients, mesh, bench, manifests tests).

/// The pod whose sidecar served the response.
pub const UPSTREAM_POD: &str = "x-upstream-pod";
/// The downstream connection id at that sidecar (Envoy's `connection.id`).
pub const UPSTREAM_CONNECTION_ID: &str = "x-upstream-connection-id";
/// 1-based index of this request on that connection.
pub const UPSTREAM_CONNECTION_REQUESTS: &str = "x-upstream-connection-requests";

/// Headers the transport owns: HTTP/1.1 framing and connection management,
/// headers HTTP/2 forbids or fills itself, and every `grpc-*` name (gRPC
/// status, message, encoding; the rest reserved by the gRPC spec). Neither
/// the filter (as a tag name) nor the echo server (as an echoed header) may
/// set one: doing so breaks calls or desynchronizes the connection.
pub fn is_transport_owned(name: &str) -> bool {
    const OWNED: [&str; 11] = [
        "connection",
        "content-length",
        "content-type",
        "date",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    OWNED.contains(&name) || name.starts_with("grpc-")
}
