//! The looping clients `client-grpc` and `client-http`: each call prints
//! `#N: <pod>` (as the Go demo jxlwqq/grpc-lb) plus what is known about the
//! connection that carried it, and a summary shows the spread over pods.
//!
//! The binaries are thin: parse flags ([`grpc::Args`], [`http::Args`]) into
//! plain configs, then [`grpc::run`] / [`http::run`], which drive the shared
//! loop in [`calling_loop`].

pub mod calling_loop;
pub mod cli;
pub mod duration;
pub mod grpc;
pub mod http;
pub mod record;
pub mod signal;
/// The running totals over the records, from the `wire` crate.
pub use wire::summary;

pub use calling_loop::LoopConfig;
pub use record::{Call, CallError, Record, Tags};
pub use summary::Summary;
