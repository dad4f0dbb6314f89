//! Helpers shared by the filter's Envoy tests, the local mesh and the
//! benchmarks: everything runs for real on 127.0.0.1.
//!
//! - [`paths`]: the workspace, Envoy (`ENVOY` or `.venv/bin/envoy`), the
//!   built `dist/upstream_tagger.wasm`, per-run directories under `target/`.
//! - [`process`]: the child-process guard (kills and reaps on `Drop`, on
//!   errors and on Ctrl-C), core pinning, free ports, deadline-based waiting.
//! - [`envoy`]: the one Envoy launcher (tests, mesh, bench): start Envoy on
//!   a rendered config (pinned, concurrency, log levels), wait for `/ready`,
//!   read `/stats`, `/stats/prometheus`, the log and its `[error]` lines.
//! - [`http`]: the one HTTP client of tests and tools, on hyper: HTTP/1.1
//!   (admin API, plain HTTP checks), blocking or async, and [`http::h2c`]
//!   (gRPC-shaped HTTP/2 calls, several on one connection, and churn).
//! - [`dns`]: an in-process authoritative DNS server (UDP and TCP, its own
//!   thread) whose A records change during a run, as a headless Service's do.
//!
//! The Istio-shaped configs it runs come from the `sidecar` crate.
//!
//! ```no_run
//! use harness::envoy::Envoy;
//! # fn main() -> Result<(), harness::Error> {
//! # let bootstrap = serde_json::json!({});
//! let envoy = Envoy::start("example", &bootstrap)?;
//! let listener = envoy.listener_addr("virtualInbound")?;
//! assert!(envoy.error_lines().is_empty());
//! # let _ = listener; Ok(()) }
//! ```

pub mod dns;
pub mod envoy;
pub mod http;
pub mod paths;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Envoy not found at {}: run `make envoy` (or set ENVOY=/path/to/envoy)", .0.display())]
    EnvoyMissing(PathBuf),
    #[error("wasm module not found at {}: run `make wasm`", .0.display())]
    WasmMissing(PathBuf),
    #[error("{names} are not built next to {}: run `cargo build --bins` (or `make demo`)", .exe.display())]
    NotBuilt { names: String, exe: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not happen within {timeout:?}{}", log_hint(.log))]
    Timeout {
        what: String,
        timeout: Duration,
        log: Option<PathBuf>,
    },
    #[error("Envoy exited ({status}) before it was ready; log {}:\n{tail}", .log.display())]
    EnvoyExited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not finish within {deadline:?} and was stopped")]
    Stopped { name: String, deadline: Duration },
    /// `what`: e.g. "exited (exit status: 1) before listening on <addr>".
    #[error("{name} {what}; its log {}:\n{tail}", .log.display())]
    NotListening {
        name: String,
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("HTTP {0}")]
    Http(String),
    /// Bad input to [`dns::DnsServer`]: a name or TTL it cannot serve.
    #[error("DNS: {0}")]
    Dns(String),
}

fn log_hint(log: &Option<PathBuf>) -> String {
    match log {
        Some(log) => format!(" (log: {})", log.display()),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
