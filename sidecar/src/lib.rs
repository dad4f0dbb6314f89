//! The Istio-shaped sidecars as Envoy bootstraps: what istiod and
//! istio-agent would give a pod's `istio-proxy` for our `istio/` manifests,
//! rendered by one set of functions that the filter's in-Envoy tests, the
//! local mesh (`mesh demo`, `mesh up`), `mesh render` (compared with
//! istiod's own rendering by `make istio-check`) and the bench all use.
//!
//! A crate of its own, below `harness` and `mesh`, because it is neither:
//! not test plumbing (it starts nothing; `mesh render` ships it) and not the
//! demo (tests and the bench need it without the mesh). It is pure: values
//! in, JSON out, no processes, no Envoy.
//!
//! - Istio resources → policies: [`destination_rule`] (`trafficPolicy` →
//!   [`destination_rule::ClusterPolicy`]), [`sidecar_resource`] (the
//!   Sidecar's `inboundConnectionPool`), [`wasm_plugin`] (which sidecars and
//!   listeners get the filter), with Istio's [`duration`] syntax; read from
//!   the files by [`manifests`]. DestinationRule, Sidecar and WasmPlugin
//!   specs are typed serde structs; [`resource`] reads them and names a
//!   refused field.
//! - Policies → Envoy: [`inbound`] (server pods), [`outbound`] (the client
//!   pod), [`wasm_filter`] (the WasmPlugin's HTTP filter, inline or ECDS).
//! - [`pods`]: the pods' labels and names.
//!
//! Deliberate differences from istiod, the one list of them (the Go
//! comparer in `tools/istio-oracle` skips exactly these fields). None changes
//! what the demo shows, which is per-request balancing, connection pools and
//! circuit breakers: the same Envoy cluster code with the same fields.
//! - Outbound endpoints come by EDS, as from istiod, but from a file the
//!   Envoy watches ([`eds`]), not over ADS: one machine has no control
//!   plane; the mesh rewrites the file as pods come and go and the running
//!   Envoy applies it, as it applies istiod's pushes. Inbound, the app's
//!   STATIC loopback address, not ORIGINAL_DST/127.0.0.6-bound: no iptables.
//!   The load balancer sees the same set of hosts either way.
//! - Sidecar ↔ sidecar is plaintext h2c, not mTLS with ALPN `istio-h2`:
//!   there is no CA; HTTP/2 framing, streams and connection reuse are the
//!   same, only the transport socket differs.
//! - No iptables: the client app dials its sidecar's outbound listener, and
//!   the server sidecar listens on its own port (15006) in front of the app,
//!   so listener names and addresses, and the `virtualOutbound`/
//!   `virtualInbound` filter-chain matching, differ (a second inbound port
//!   gets a listener of its own: see [`inbound`]).
//! - No Istio-only filters (metadata_exchange, istio_authn, istio.stats,
//!   grpc_stats, …): they are not in upstream Envoy; the wasm filter is
//!   first in the chain, before the router, which is where it runs relative
//!   to the router in istiod's chain too.
//! - Route configurations are inline (`route_config`), not RDS; the wasm
//!   filter is inline (ECDS from a file on request), not ECDS over ADS:
//!   same resources, delivered in the bootstrap.
//! - Outbound routes are istiod's default route for a VirtualService that
//!   sets neither timeout nor retries (ours): VirtualServices are not read.

use std::net::SocketAddr;

use serde_json::{Value, json};

pub mod destination_rule;
pub mod duration;
pub mod eds;
pub mod inbound;
pub mod manifests;
pub mod outbound;
pub mod pods;
pub mod resource;
pub mod sidecar_resource;
pub mod wasm_filter;
pub mod wasm_plugin;

pub use inbound::{AppProtocol, InboundPort, InboundSidecar};
pub use wasm_filter::{FailurePolicy, WasmFilter};

/// The policies istiod gives the sidecars in one experiment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SidecarPolicies {
    /// The client's outbound cluster: the DestinationRule under test.
    pub outbound: destination_rule::ClusterPolicy,
    /// The server sidecars' inbound cluster (sidecar → app): the Sidecar's
    /// `inboundConnectionPool` (`istio/sidecar.yaml`), never the
    /// DestinationRule (see [`sidecar_resource`]).
    pub inbound: destination_rule::ClusterPolicy,
}

/// An Envoy `socket_address`.
pub fn socket_address(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// The router, last in every HTTP filter chain.
pub(crate) fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}
