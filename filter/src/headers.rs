//! Default response header names: the one definition every crate imports
//! (filter, clients, mesh, manifests tests).

/// The pod whose sidecar served the response.
pub const UPSTREAM_POD: &str = "x-upstream-pod";
/// The downstream connection id at that sidecar (Envoy's `connection.id`).
pub const UPSTREAM_CONNECTION_ID: &str = "x-upstream-connection-id";
/// 1-based index of this request on that connection.
pub const UPSTREAM_CONNECTION_REQUESTS: &str = "x-upstream-connection-requests";
