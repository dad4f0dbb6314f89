//! Facts on the wire between the pieces of grpc-lb, defined once:
//!
//! - [`headers`]: the response headers the upstream-tagger filter adds, and
//!   the headers the transport owns (neither the filter nor the echo server
//!   may set them);
//! - [`record`] (feature `records`): one call as a client prints it, the
//!   `#N: <pod> ...` line and its JSON form, which the mesh reads back;
//! - [`summary`] (feature `records`): the running totals over those records.

pub mod headers;
#[cfg(feature = "records")]
pub mod record;
#[cfg(feature = "records")]
pub mod summary;

#[cfg(feature = "records")]
pub use record::{Call, CallError, Record, Tags};
#[cfg(feature = "records")]
pub use summary::Summary;
