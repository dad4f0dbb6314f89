//! Generated code for `api.protobuf.pod`, the Go demo's service.

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod pb {
    tonic::include_proto!("api.protobuf");
}

/// Encoded `FileDescriptorSet` of `pod.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pod_descriptor");

/// Full gRPC service name, as `grpcurl list` shows it.
pub const SERVICE_NAME: &str = "api.protobuf.pod";

/// Path of the one method, as it travels on the wire.
pub const GET_INFO_PATH: &str = "/api.protobuf.pod/getInfo";

pub use pb::{
    Request as InfoRequest, Response as InfoResponse,
    pod_client::PodClient,
    pod_server::{Pod, PodServer},
};

/// HTTP response header carrying the server's per-connection request count
/// (the HTTP twin of `response.connection_requests`).
pub const SERVER_CONNECTION_REQUESTS_HEADER: &str = "x-server-connection-requests";

/// Request header (gRPC: metadata) `name=value`, may repeat: the echo server
/// adds that header to its response. Lets tests and users check what a proxy
/// does with headers an app sets (e.g. a spoofed `x-upstream-pod`).
pub const ECHO_RESPONSE_HEADER: &str = "x-echo-response-header";
