//! `client-grpc`: calls `api.protobuf.pod/getInfo` in a loop over one of
//! three connection strategies, the heart of the L4-vs-L7 demonstration.
//!
//! [`args`] reads the flags, [`call`] makes one call and names its failure,
//! [`round_robin`] is the client-side balancer of `--mode round-robin`,
//! [`dns`] its resolver for `--dns-server`.

use std::{future::Future, io::Write, sync::Arc, time::Duration};

use hyper::{HeaderMap, http::uri::Authority};

pub mod args;
pub mod call;
pub mod dns;
pub mod round_robin;

pub use args::{Args, Mode, parse_targets};
pub use call::{GrpcCaller, code_name, status_call};
pub use round_robin::{Backends, Pool, Resolved, Resolver};

use crate::{
    calling_loop::{self, LoopConfig},
    summary::Summary,
};
use call::{Connection, Shared, endpoint};

/// Everything the gRPC callers need, as a plain struct tests build directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// One `host:port`, or several for round-robin.
    pub targets: Vec<Authority>,
    pub mode: Mode,
    pub concurrency: u32,
    pub delay: Duration,
    pub timeout: Duration,
    pub resolve_every: Duration,
    /// How round-robin turns the targets into addresses: the system resolver,
    /// one DNS server (`--dns-server`), or answers a test substitutes.
    pub resolver: Resolver,
    /// Extra request metadata.
    pub headers: HeaderMap,
    /// HTTP/2 keepalive on every connection; `None`: off, as in gRPC.
    pub keepalive: Option<Keepalive>,
}

/// HTTP/2 keepalive (`--keepalive-time`, `--keepalive-timeout`), as
/// grpc-go's `keepalive.ClientParameters` with `PermitWithoutStream`: a PING
/// every `time`, with or without calls in flight, and the connection closed
/// (its calls failed, the next call reconnecting) when one goes unanswered
/// for `timeout`. What notices a peer that vanished without a FIN or RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Duration,
    pub timeout: Duration,
}

/// Runs the loop as configured until `count` or `shutdown`.
pub async fn run(
    config: Config,
    loop_config: &LoopConfig,
    out: impl Write + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let shared = Arc::new(Shared {
        delay_ms: u32::try_from(config.delay.as_millis()).unwrap_or(u32::MAX),
        timeout: config.timeout,
        metadata: config.headers.clone(),
    });
    let Some(first) = config.targets.first() else {
        log::error!("no target to call");
        return Summary::default();
    };
    let connection = match config.mode {
        Mode::Reuse => Connection::Reuse(endpoint(first, &config).connect_lazy()),
        Mode::PerCall => Connection::PerCall(Arc::new(endpoint(first, &config))),
        Mode::RoundRobin => Connection::RoundRobin(Pool::start(&config).await),
    };
    let callers = (0..config.concurrency)
        .map(|_| GrpcCaller {
            connection: connection.clone(),
            shared: shared.clone(),
        })
        .collect();
    calling_loop::run(loop_config, callers, out, shutdown).await
}
