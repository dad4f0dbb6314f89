//! upstream-tagger: a proxy-wasm HTTP filter that stamps each gRPC response
//! with the pod that served it and the request index on its connection.

pub mod headers;
