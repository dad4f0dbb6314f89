//! `client-grpc`: calls `api.protobuf.pod/getInfo` in a loop over one of
//! three connection strategies, the heart of the L4-vs-L7 demonstration.

use std::{
    error::Error as _,
    future::Future,
    io::Write,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use hyper::{HeaderMap, Uri, http::uri::Authority};
use proto::{InfoRequest, PodClient};
use tonic::{
    Code, Status, TimeoutExpired,
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use crate::{
    cli::LoopArgs,
    duration::{format_duration, parse_duration},
    record::{Call, Tags, error_text},
    run::{self, Caller, LoopConfig},
    summary::Summary,
};

#[derive(Parser, Debug)]
#[command(
    name = "client-grpc",
    version,
    about = "Calls api.protobuf.pod/getInfo in a loop and prints which pod answered: `#N: <pod> ...`"
)]
pub struct Args {
    /// Server `host:port` (also `http://host:port`, `dns:///host:port`). With
    /// `--mode round-robin`, a comma-separated list of them is allowed.
    #[arg(
        long,
        visible_alias = "target",
        env = "CLIENT_TARGET",
        value_name = "HOST:PORT"
    )]
    pub host: String,

    /// reuse: one channel, as the Go demo (a Service's L4 balancing pins it to
    /// one pod); per-call: a new connection per call; round-robin: one
    /// connection per address the host name resolves to, calls rotate.
    #[arg(long, value_enum, env = "CLIENT_MODE", default_value_t = Mode::Reuse)]
    pub mode: Mode,

    /// Ask the server to hold each call this long (request `delay_ms`).
    #[arg(long, env = "CLIENT_DELAY", default_value = "0", value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Duration,

    /// round-robin: re-resolve the host name this often, adding and removing
    /// endpoints; 0 = resolve once.
    #[arg(long, env = "CLIENT_RESOLVE_EVERY", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub resolve_every: Duration,

    #[command(flatten)]
    pub common: LoopArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Reuse,
    PerCall,
    RoundRobin,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Reuse => "reuse",
            Mode::PerCall => "per-call",
            Mode::RoundRobin => "round-robin",
        }
    }
}

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
    /// How round-robin turns the targets into addresses: DNS unless a test
    /// substitutes answers that change.
    pub resolver: Resolver,
    /// Extra request metadata.
    pub headers: HeaderMap,
}

/// Every address of every target, with the name it came from.
pub type Resolved = Result<Vec<(SocketAddr, Authority)>, String>;

type ResolveFn =
    dyn Fn(Vec<Authority>) -> Pin<Box<dyn Future<Output = Resolved> + Send>> + Send + Sync;

/// Resolution for round-robin, DNS by default.
#[derive(Clone)]
pub struct Resolver(Arc<ResolveFn>);

impl Resolver {
    /// Answers from `resolve` instead of DNS.
    pub fn new<F, Fut>(resolve: F) -> Self
    where
        F: Fn(Vec<Authority>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resolved> + Send + 'static,
    {
        Resolver(Arc::new(move |targets| Box::pin(resolve(targets))))
    }

    async fn resolve(&self, targets: &[Authority]) -> Resolved {
        (self.0)(targets.to_vec()).await
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(|targets| async move { resolve_all(&targets).await })
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Args {
    /// Checks what clap cannot; the error is a usage error (exit 64).
    pub fn config(&self) -> Result<(Config, LoopConfig), String> {
        let targets = parse_targets(&self.host)?;
        if targets.len() > 1 && self.mode != Mode::RoundRobin {
            return Err(format!(
                "--host lists {} addresses; a list needs --mode round-robin",
                targets.len()
            ));
        }
        if u32::try_from(self.delay.as_millis()).is_err() {
            return Err("--delay is too large".into());
        }
        let config = Config {
            targets,
            mode: self.mode,
            concurrency: self.common.concurrency,
            delay: self.delay,
            timeout: self.common.timeout,
            resolve_every: self.resolve_every,
            resolver: Resolver::default(),
            headers: self.common.headers.iter().cloned().collect(),
        };
        Ok((config, self.common.loop_config()?))
    }

    pub fn describe(&self) -> String {
        format!(
            "client-grpc: target {}, mode {}, delay {}, {}",
            self.host,
            self.mode.name(),
            format_duration(self.delay),
            self.common.describe()
        )
    }
}

/// Accepts `host:port`, `http://host:port`, `dns:///host:port` (and
/// `dns://resolver/host:port`, resolver ignored), or a comma-separated list.
pub fn parse_targets(raw: &str) -> Result<Vec<Authority>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(parse_target)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|targets| {
            if targets.is_empty() {
                Err("--host is empty (e.g. --host server:30051)".to_owned())
            } else {
                Ok(targets)
            }
        })
}

fn parse_target(raw: &str) -> Result<Authority, String> {
    let rest = if let Some(rest) = raw.strip_prefix("dns:") {
        // dns:host:port, dns:///host:port, dns://resolver/host:port
        match rest.strip_prefix("//") {
            Some(with_authority) => with_authority
                .split_once('/')
                .map(|(_, target)| target)
                .ok_or_else(|| format!("invalid target {raw:?} (e.g. dns:///server:30051)"))?,
            None => rest,
        }
    } else if let Some(rest) = raw.strip_prefix("http://") {
        rest
    } else if raw.starts_with("https://") {
        return Err(format!(
            "{raw:?}: TLS is not supported; in a mesh the sidecar does mTLS, use host:port"
        ));
    } else {
        raw
    };
    let rest = rest.trim_end_matches('/');
    let authority: Authority = rest
        .parse()
        .map_err(|_| format!("invalid target {raw:?} (e.g. server:30051)"))?;
    if authority.port_u16().is_none() {
        return Err(format!("target {raw:?} has no port (e.g. server:30051)"));
    }
    Ok(authority)
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
    run::run(loop_config, callers, out, shutdown).await
}

fn endpoint(target: &Authority, config: &Config) -> Endpoint {
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.clone())
        .path_and_query("/")
        .build()
        .expect("scheme, a parsed authority and / make a valid URI");
    Endpoint::from(uri).connect_timeout(config.timeout)
}

#[derive(Debug)]
struct Shared {
    delay_ms: u32,
    timeout: Duration,
    metadata: HeaderMap,
}

#[derive(Clone)]
enum Connection {
    /// One channel shared by every caller: one HTTP/2 connection, reconnected
    /// by tonic when it breaks.
    Reuse(Channel),
    /// Connect, call, close.
    PerCall(Arc<Endpoint>),
    RoundRobin(Arc<Pool>),
}

pub struct GrpcCaller {
    connection: Connection,
    shared: Arc<Shared>,
}

impl Shared {
    fn request(&self) -> tonic::Request<InfoRequest> {
        let mut request = tonic::Request::new(InfoRequest {
            delay_ms: self.delay_ms,
        });
        *request.metadata_mut() = MetadataMap::from_headers(self.metadata.clone());
        // The deadline travels as grpc-timeout too, so proxies and the server
        // give up when we do.
        request.set_timeout(self.timeout);
        request
    }
}

impl Caller for GrpcCaller {
    async fn call(&mut self) -> Call {
        let shared = &self.shared;
        let attempt = async {
            match &self.connection {
                Connection::Reuse(channel) => get_info(channel, shared).await,
                Connection::PerCall(endpoint) => match endpoint.connect().await {
                    Ok(channel) => get_info(&channel, shared).await,
                    Err(e) => Call::error("UNAVAILABLE", error_text("connect", Some(&e))),
                },
                Connection::RoundRobin(pool) => pool.call(shared).await,
            }
        };
        match tokio::time::timeout(shared.timeout, attempt).await {
            Ok(call) => call,
            Err(_) => Call::error("DEADLINE_EXCEEDED", deadline_message(shared.timeout)),
        }
    }
}

/// Sends of one getInfo that no server processed, at most: the retry may race
/// the next connection's close too (a proxy closing after every request), so
/// once is not enough on a busy machine; a bound keeps a dead peer from
/// looping.
const UNPROCESSED_ATTEMPTS: usize = 3;

/// One getInfo. A request the server never processed because its connection
/// went away first (a proxy that closes after N requests, e.g. Envoy's
/// `max_requests_per_connection`, or a server draining) is sent again, as
/// grpc-go's transparent retry does: the Go demo's client would not report
/// it either, and getInfo is read-only anyway.
async fn get_info(channel: &Channel, shared: &Shared) -> Call {
    let mut result = PodClient::new(channel.clone())
        .get_info(shared.request())
        .await;
    for _ in 1..UNPROCESSED_ATTEMPTS {
        match &result {
            Err(status) if unprocessed(status) => {
                log::debug!("request not processed, its connection went away; sending it again");
                result = PodClient::new(channel.clone())
                    .get_info(shared.request())
                    .await;
            }
            _ => break,
        }
    }
    match result {
        Ok(response) => {
            let tags = Tags::from_headers(response.metadata().as_ref());
            let info = response.into_inner();
            let mut call = Call::ok(info.name).with_tags(tags);
            // Empty/zero: an older server (the Go demo) that does not say.
            call.peer = (!info.peer.is_empty()).then_some(info.peer);
            call.conn_requests = (info.connection_requests > 0).then_some(info.connection_requests);
            call
        }
        Err(status) => status_call(&status, shared.timeout),
    }
}

/// The server never processed the request: hyper gave it back unsent (its
/// connection closed first), the server refused the stream, or its graceful
/// GOAWAY came before this stream.
fn unprocessed(status: &Status) -> bool {
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let graceful_goaway =
                h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            return graceful_goaway || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = e.source();
    }
    false
}

/// The connection broke under a call the server had started: the server was
/// killed, or cut its connections at the end of a drain. Only errors of our
/// own transport count (a status the server sent has no source), and only
/// the connection-level ones: a stream reset keeps tonic's code for it.
fn connection_lost(status: &Status) -> bool {
    let mut cause = status.source();
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_io() || (h2.is_go_away() && h2.is_remote());
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_closed() || hyper.is_incomplete_message())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

/// A failed call: canonical code, message with its causes, and the tags the
/// error response carried (trailers-only responses put them in the status).
pub fn status_call(status: &Status, timeout: Duration) -> Call {
    let tags = Tags::from_headers(status.metadata().as_ref());
    // tonic reports its own enforcement of our deadline as CANCELLED; grpc-go
    // and grpcurl call that DEADLINE_EXCEEDED, and so do we.
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<TimeoutExpired>().is_some() {
            return Call::error("DEADLINE_EXCEEDED", deadline_message(timeout)).with_tags(tags);
        }
        cause = e.source();
    }
    // tonic says UNKNOWN, CANCELLED or INTERNAL when a connection went away
    // under the request; gRPC's status-code table says UNAVAILABLE (we never
    // cancel).
    let code = if unprocessed(status) || connection_lost(status) {
        "UNAVAILABLE"
    } else {
        code_name(status.code())
    };
    Call::error(code, error_text(status.message(), status.source())).with_tags(tags)
}

fn deadline_message(timeout: Duration) -> String {
    format!("no answer within {}", format_duration(timeout))
}

/// The canonical (grpc-go, grpcurl) spelling of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---- round robin -----------------------------------------------------------
//
// Our own rotation over one channel per resolved address rather than
// `Channel::balance_channel`: tower's balancer is power-of-two-choices, which
// with one caller spreads calls randomly; gRPC's `round_robin` policy (what
// the Go demo's headless-Service setup uses) rotates strictly, and a strict
// rotation is what a reader of `#N: <pod>` lines expects to see.

/// The resolved endpoints and their health, generic over the channel type so
/// the bookkeeping is tested without a network.
#[derive(Debug)]
pub struct Backends<T> {
    list: Vec<Backend<T>>,
    next: usize,
}

#[derive(Debug)]
struct Backend<T> {
    addr: SocketAddr,
    channel: T,
    /// Consecutive UNAVAILABLE results; skipped until `retry_at` while > 0.
    failures: u32,
    retry_at: Option<Instant>,
}

impl<T: Clone> Default for Backends<T> {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            next: 0,
        }
    }
}

impl<T: Clone> Backends<T> {
    /// Replaces the address set: keeps the channels (and health) of addresses
    /// still present, adds new ones, drops gone ones. Returns (added, removed).
    pub fn update(
        &mut self,
        mut resolved: Vec<SocketAddr>,
        mut connect: impl FnMut(SocketAddr) -> T,
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        // Sorted, so the rotation order does not depend on the resolver's.
        resolved.sort_unstable();
        resolved.dedup();
        let removed = self
            .list
            .iter()
            .map(|b| b.addr)
            .filter(|a| resolved.binary_search(a).is_err())
            .collect();
        let mut old: Vec<Backend<T>> = std::mem::take(&mut self.list);
        let mut added = Vec::new();
        for addr in resolved {
            match old.iter().position(|b| b.addr == addr) {
                Some(i) => self.list.push(old.swap_remove(i)),
                None => {
                    added.push(addr);
                    self.list.push(Backend {
                        addr,
                        channel: connect(addr),
                        failures: 0,
                        retry_at: None,
                    });
                }
            }
        }
        (added, removed)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(|b| b.addr).collect()
    }

    /// The next endpoint in rotation, skipping those backing off after
    /// failures (as gRPC's round_robin skips non-READY subchannels); when all
    /// are backing off, the plain rotation, so failures stay visible.
    pub fn pick(&mut self, now: Instant) -> Option<(SocketAddr, T)> {
        let len = self.list.len();
        if len == 0 {
            return None;
        }
        let start = self.next % len;
        let index = (0..len)
            .map(|i| (start + i) % len)
            .find(|&i| self.list[i].retry_at.is_none_or(|at| at <= now))
            .unwrap_or(start);
        self.next = index + 1;
        let backend = &self.list[index];
        Some((backend.addr, backend.channel.clone()))
    }

    /// Records a call's fate: an unreachable endpoint backs off 1s, 2s, 4s ...
    /// up to 30s; any other answer proves it reachable.
    pub fn report(&mut self, addr: SocketAddr, unreachable: bool, now: Instant) {
        let Some(backend) = self.list.iter_mut().find(|b| b.addr == addr) else {
            return;
        };
        if unreachable {
            backend.failures = backend.failures.saturating_add(1);
            let backoff = Duration::from_secs(1 << (backend.failures - 1).min(5)).min(MAX_BACKOFF);
            backend.retry_at = Some(now + backoff);
        } else {
            backend.failures = 0;
            backend.retry_at = None;
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Pool {
    targets: Vec<Authority>,
    resolver: Resolver,
    timeout: Duration,
    backends: Mutex<Backends<Channel>>,
    last_error: Mutex<Option<String>>,
}

impl Pool {
    /// Resolves once now (a failure is reported per call, not fatal: the name
    /// may appear later) and re-resolves every `resolve_every` in the
    /// background for as long as the pool lives.
    async fn start(config: &Config) -> Arc<Self> {
        let pool = Arc::new(Pool {
            targets: config.targets.clone(),
            resolver: config.resolver.clone(),
            timeout: config.timeout,
            backends: Mutex::new(Backends::default()),
            last_error: Mutex::new(None),
        });
        pool.refresh().await;
        if !config.resolve_every.is_zero() {
            tokio::spawn(refresh_loop(Arc::downgrade(&pool), config.resolve_every));
        }
        pool
    }

    async fn refresh(&self) {
        // A resolver that hangs must not hang the calls waiting on it.
        let resolved = tokio::time::timeout(self.timeout, self.resolver.resolve(&self.targets))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "resolving took longer than {}",
                    format_duration(self.timeout)
                ))
            });
        match resolved {
            Ok(addrs) => {
                *lock(&self.last_error) = None;
                let (added, removed, now) = {
                    let mut backends = lock(&self.backends);
                    let resolved = addrs.iter().map(|(addr, _)| *addr).collect();
                    let (added, removed) = backends.update(resolved, |addr| {
                        let name = addrs.iter().find(|(a, _)| *a == addr).map(|(_, name)| name);
                        self.channel(addr, name.unwrap_or(&self.targets[0]))
                    });
                    (added, removed, backends.addrs())
                };
                if !added.is_empty() || !removed.is_empty() {
                    log::info!(
                        "round-robin: {} endpoint(s) {} (added {}, removed {})",
                        now.len(),
                        list(&now),
                        list(&added),
                        list(&removed)
                    );
                }
            }
            Err(e) => {
                // Keep the last good set: a DNS hiccup must not empty it.
                log::warn!("round-robin: {e}; keeping the previous endpoints");
                *lock(&self.last_error) = Some(e);
            }
        }
    }

    /// A lazily connecting channel to one address, keeping the name the user
    /// gave as `:authority` (sidecars route on it).
    fn channel(&self, addr: SocketAddr, name: &Authority) -> Channel {
        let origin = Uri::builder()
            .scheme("http")
            .authority(name.clone())
            .path_and_query("/")
            .build();
        let uri = Uri::builder()
            .scheme("http")
            .authority(addr.to_string().as_str())
            .path_and_query("/")
            .build()
            .expect("a socket address is a valid authority");
        let mut endpoint = Endpoint::from(uri).connect_timeout(self.timeout);
        if let Ok(origin) = origin {
            endpoint = endpoint.origin(origin);
        }
        endpoint.connect_lazy()
    }

    async fn call(&self, shared: &Shared) -> Call {
        let mut picked = lock(&self.backends).pick(Instant::now());
        if picked.is_none() {
            // Nothing resolved yet (the name may be new): try again now.
            self.refresh().await;
            picked = lock(&self.backends).pick(Instant::now());
        }
        let Some((addr, channel)) = picked else {
            let why = lock(&self.last_error)
                .clone()
                .unwrap_or_else(|| "the name resolved to no addresses".into());
            return Call::error("UNAVAILABLE", format!("no endpoints: {why}"));
        };
        let call = get_info(&channel, shared).await;
        let unreachable = matches!(&call.outcome, Err(e) if e.code == "UNAVAILABLE");
        lock(&self.backends).report(addr, unreachable, Instant::now());
        call
    }
}

async fn refresh_loop(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.refresh().await;
    }
}

/// Every address of every target, with the name it came from; any failure
/// fails the whole resolution so a partial answer never shrinks the set.
async fn resolve_all(targets: &[Authority]) -> Resolved {
    let mut all = Vec::new();
    for target in targets {
        let addrs = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|e| format!("cannot resolve {target}: {e}"))?;
        all.extend(addrs.map(|addr| (addr, target.clone())));
    }
    Ok(all)
}

fn list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// A poisoned lock only means another caller panicked mid-update of plain
/// bookkeeping; keep going with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn targets_accept_the_go_demo_forms() {
        for raw in [
            "server:30051",
            "http://server:30051",
            "dns:///server:30051",
            "dns://8.8.8.8/server:30051",
            "dns:server:30051",
            "server:30051/",
        ] {
            let targets = parse_targets(raw).unwrap();
            assert_eq!(targets.len(), 1, "{raw}");
            assert_eq!(targets[0].as_str(), "server:30051", "{raw}");
        }
        assert_eq!(
            parse_targets("[::1]:5000").unwrap()[0].port_u16(),
            Some(5000)
        );
        let list = parse_targets("127.0.0.1:1, 127.0.0.2:2").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn targets_reject_missing_ports_tls_and_garbage() {
        for raw in [
            "server",
            "https://server:443",
            "",
            " , ",
            "a b:1",
            "dns://x",
        ] {
            assert!(parse_targets(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_list_needs_round_robin() {
        let args = Args::try_parse_from(["client-grpc", "--host", "a:1,b:2"]).unwrap();
        assert!(args.config().unwrap_err().contains("round-robin"));
        let args = Args::try_parse_from([
            "client-grpc",
            "--target",
            "a:1,b:2",
            "--mode",
            "round-robin",
        ])
        .unwrap();
        assert_eq!(args.config().unwrap().0.targets.len(), 2);
    }

    #[test]
    fn codes_use_the_canonical_spelling() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unimplemented), "UNIMPLEMENTED");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn status_errors_carry_their_tags() {
        let mut status = Status::unavailable("upstream connect error\nreset");
        status.metadata_mut().insert(
            upstream_tagger::headers::UPSTREAM_POD,
            "server-1".parse().unwrap(),
        );
        let call = status_call(&status, Duration::from_secs(1));
        assert_eq!(
            call.outcome.unwrap_err(),
            crate::record::CallError {
                code: "UNAVAILABLE".into(),
                message: "upstream connect error reset".into()
            }
        );
        assert_eq!(call.tags.pod.as_deref(), Some("server-1"));
    }

    #[test]
    fn rotation_is_strict_and_sorted() {
        let mut b = Backends::default();
        b.update(
            vec![addr("10.0.0.2:1"), addr("10.0.0.1:1"), addr("10.0.0.3:1")],
            |a| a.to_string(),
        );
        let now = Instant::now();
        let picks: Vec<String> = (0..6).map(|_| b.pick(now).unwrap().1).collect();
        assert_eq!(
            picks,
            [
                "10.0.0.1:1",
                "10.0.0.2:1",
                "10.0.0.3:1",
                "10.0.0.1:1",
                "10.0.0.2:1",
                "10.0.0.3:1"
            ]
        );
    }

    #[test]
    fn update_keeps_existing_channels_and_reports_changes() {
        let mut b = Backends::default();
        let mut made = 0;
        b.update(vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")], |a| {
            made += 1;
            a.to_string()
        });
        let (added, removed) = b.update(vec![addr("10.0.0.2:1"), addr("10.0.0.3:1")], |a| {
            made += 1;
            a.to_string()
        });
        assert_eq!(made, 3, "10.0.0.2 keeps its channel");
        assert_eq!(added, [addr("10.0.0.3:1")]);
        assert_eq!(removed, [addr("10.0.0.1:1")]);
        assert_eq!(b.addrs(), [addr("10.0.0.2:1"), addr("10.0.0.3:1")]);
        let (added, removed) = b.update(vec![], |a| a.to_string());
        assert_eq!((added.len(), removed.len()), (0, 2));
        assert!(b.pick(Instant::now()).is_none());
    }

    #[test]
    fn unreachable_endpoints_are_skipped_until_their_backoff_ends() {
        let mut b = Backends::default();
        b.update(vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")], |a| a);
        let now = Instant::now();
        b.report(addr("10.0.0.1:1"), true, now);
        let picks: Vec<SocketAddr> = (0..3).map(|_| b.pick(now).unwrap().0).collect();
        assert_eq!(picks, [addr("10.0.0.2:1"); 3]);
        // After the 1s backoff it is tried again.
        let later = now + Duration::from_secs(1);
        let picks: Vec<SocketAddr> = (0..2).map(|_| b.pick(later).unwrap().0).collect();
        assert!(picks.contains(&addr("10.0.0.1:1")));
        // A second failure doubles the backoff; success clears it.
        b.report(addr("10.0.0.1:1"), true, later);
        assert_eq!(
            b.pick(later + Duration::from_millis(1500)).unwrap().0,
            addr("10.0.0.2:1")
        );
        b.report(addr("10.0.0.1:1"), false, later);
        let picks: Vec<SocketAddr> = (0..2).map(|_| b.pick(later).unwrap().0).collect();
        assert!(picks.contains(&addr("10.0.0.1:1")));
    }

    #[test]
    fn all_unreachable_still_rotates_so_errors_show() {
        let mut b = Backends::default();
        b.update(vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")], |a| a);
        let now = Instant::now();
        b.report(addr("10.0.0.1:1"), true, now);
        b.report(addr("10.0.0.2:1"), true, now);
        let picks: Vec<SocketAddr> = (0..2).map(|_| b.pick(now).unwrap().0).collect();
        assert_eq!(picks, [addr("10.0.0.1:1"), addr("10.0.0.2:1")]);
    }
}

/// Round-robin against real servers, with DNS answers the test controls.
#[cfg(test)]
mod re_resolution {
    use std::collections::BTreeSet;

    use super::*;

    async fn serve(pod: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let server = server::Server::bind(server::Config::local(pod))
            .await
            .expect("bind a server");
        let addr = server.grpc_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// A headless Service gaining and then losing a pod: after the next
    /// re-resolution the new address is called, the removed one no longer.
    #[tokio::test]
    async fn round_robin_follows_the_names_changing_answers() {
        let (a, _stop_a) = serve("pod-a").await;
        let (b, _stop_b) = serve("pod-b").await;
        let answers = Arc::new(Mutex::new(vec![a]));
        let resolver = {
            let answers = answers.clone();
            Resolver::new(move |targets: Vec<Authority>| {
                let now = lock(&answers).clone();
                async move {
                    Ok(now
                        .into_iter()
                        .map(|addr| (addr, targets[0].clone()))
                        .collect())
                }
            })
        };
        let config = Config {
            targets: vec!["server.test:30051".parse().unwrap()],
            mode: Mode::RoundRobin,
            concurrency: 1,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(2),
            resolve_every: Duration::from_millis(50),
            resolver,
            headers: HeaderMap::new(),
        };
        let pool = Pool::start(&config).await;
        let shared = Shared {
            delay_ms: 0,
            timeout: config.timeout,
            metadata: HeaderMap::new(),
        };
        let pods = |calls: usize| {
            let (pool, shared) = (&pool, &shared);
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..calls {
                    let call = pool.call(shared).await;
                    seen.insert(call.outcome.expect("call succeeds"));
                }
                seen
            }
        };
        let only = |pod: &str| BTreeSet::from([pod.to_owned()]);
        let both = BTreeSet::from(["pod-a".to_owned(), "pod-b".to_owned()]);

        assert_eq!(pods(4).await, only("pod-a"));
        // Wait for re-resolution by what the calls show, with a deadline.
        let wait_for = |want: BTreeSet<String>| {
            let pods = &pods;
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    let seen = pods(4).await;
                    if seen == want {
                        return;
                    }
                    assert!(Instant::now() < deadline, "still {seen:?}, want {want:?}");
                }
            }
        };
        *lock(&answers) = vec![a, b];
        wait_for(both).await;
        *lock(&answers) = vec![b];
        wait_for(only("pod-b")).await;
        // And it stays that way: the removed endpoint is gone for good.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(pods(6).await, only("pod-b"));
    }
}
