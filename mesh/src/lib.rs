//! The local mesh: server "pods" with inbound Envoy sidecars running the real
//! upstream-tagger, an L4 "Service" (tcp_proxy, as kube-proxy), a client
//! sidecar configured from our DestinationRules, and the real clients.

pub mod destination_rule;
pub mod duration;
pub mod envoy_config;
pub mod manifests;
pub mod render;
pub mod report;
pub mod runtime;
pub mod scenario;
pub mod sidecar;
pub mod topology;
pub mod wasm_plugin;
