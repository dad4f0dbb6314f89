//! The local mesh: server "pods" with inbound Envoy sidecars running the real
//! upstream-tagger, an L4 "Service" (tcp_proxy, as kube-proxy), a client
//! sidecar configured from our DestinationRules, and the real clients. The
//! sidecars' configs come from the `sidecar` crate (the one renderer);
//! Envoy and every other process start through `harness`.

pub mod kube_proxy;
pub mod render;
pub mod report;
pub mod scenario;
pub mod topology;
