//! The default tag header names and the transport-owned headers, defined
//! once in the `wire` crate (the clients and the server read them there too).

pub use wire::headers::{
    UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD, is_transport_owned,
};
