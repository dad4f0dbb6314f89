//! upstream-tagger: a proxy-wasm HTTP filter that stamps each gRPC response
//! with the pod that served it and the request index on its connection.
//!
//! Everything that decides something (config, counting, pod name, header
//! values) is plain Rust, tested on the host; [`glue`] (wasm32 only) wires it
//! to the proxy-wasm ABI.

pub mod config;
pub mod decimal;
pub mod headers;
pub mod pod;
pub mod state;
pub mod table;

#[cfg(target_arch = "wasm32")]
mod glue;

pub use config::{Config, ConfigError};
pub use state::metrics;

/// Every log line starts with this, so `grep upstream-tagger` finds them all.
pub const LOG_PREFIX: &str = "upstream-tagger";

/// The request `content-type` marks gRPC (also gRPC-Web, which shares the
/// prefix). Media types are case-insensitive.
pub fn is_grpc_content_type(content_type: Option<&[u8]>) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type
        .is_some_and(|ct| ct.len() >= GRPC.len() && ct[..GRPC.len()].eq_ignore_ascii_case(GRPC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_recognised_by_content_type() {
        let cases: &[(Option<&[u8]>, bool)] = &[
            (Some(b"application/grpc"), true),
            (Some(b"application/grpc+proto"), true),
            (Some(b"application/grpc-web+proto"), true),
            (Some(b"Application/GRPC"), true),
            (Some(b"application/json"), false),
            (Some(b"application/grp"), false),
            (Some(b"text/plain; application/grpc"), false),
            (Some(b""), false),
            (Some(&[0xff, 0xfe]), false),
            (None, false),
        ];
        for (ct, expected) in cases {
            assert_eq!(is_grpc_content_type(*ct), *expected, "{ct:?}");
        }
    }
}
