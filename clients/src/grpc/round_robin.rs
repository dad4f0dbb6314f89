//! Client-side round robin (`--mode round-robin`): one channel per resolved
//! address, calls rotate strictly, unreachable endpoints back off, and the
//! names are re-resolved in the background.
//!
//! Our own rotation over one channel per resolved address rather than
//! `Channel::balance_channel`: tower's balancer is power-of-two-choices, which
//! with one caller spreads calls randomly; gRPC's `round_robin` policy (what
//! the Go demo's headless-Service setup uses) rotates strictly, and a strict
//! rotation is what a reader of `#N: <pod>` lines expects to see.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use hyper::{Uri, http::uri::Authority};
use tonic::transport::{Channel, Endpoint};

use super::{
    Config, Keepalive,
    call::{Shared, get_info, with_keepalive},
    dns::DnsServer,
};
use crate::{duration::format_duration, record::Call};

/// Every address of every target, with the name it came from.
pub type Resolved = Result<Vec<(SocketAddr, Authority)>, String>;

type ResolveFn =
    dyn Fn(Vec<Authority>) -> Pin<Box<dyn Future<Output = Resolved> + Send>> + Send + Sync;

/// Resolution for round-robin: the system resolver by default, one DNS
/// server with `--dns-server`.
#[derive(Clone)]
pub struct Resolver {
    resolve: Arc<ResolveFn>,
    /// Set with `--dns-server`, for the start-up probe.
    dns_server: Option<Arc<DnsServer>>,
}

impl Resolver {
    /// Answers from `resolve` instead of DNS.
    pub fn new<F, Fut>(resolve: F) -> Self
    where
        F: Fn(Vec<Authority>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resolved> + Send + 'static,
    {
        Resolver {
            resolve: Arc::new(move |targets| Box::pin(resolve(targets))),
            dns_server: None,
        }
    }

    /// Asks only the DNS server at `server` (see [`super::dns`]); a query
    /// gives up after `timeout`.
    pub fn dns_server(server: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let dns = Arc::new(DnsServer::new(server, timeout)?);
        let resolve = {
            let dns = dns.clone();
            move |targets: Vec<Authority>| {
                let dns = dns.clone();
                async move { dns.resolve_all(&targets).await }
            }
        };
        Ok(Resolver {
            dns_server: Some(dns),
            ..Resolver::new(resolve)
        })
    }

    /// With `--dns-server`, one query for the first target that is a name:
    /// `Err` only when the server does not answer at all (an NXDOMAIN is an
    /// answer: the name may appear later). Otherwise nothing to check.
    pub async fn probe(&self, targets: &[Authority]) -> Result<(), String> {
        match &self.dns_server {
            Some(dns) => dns.probe(targets).await,
            None => Ok(()),
        }
    }

    async fn resolve(&self, targets: &[Authority]) -> Resolved {
        (self.resolve)(targets.to_vec()).await
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(|targets| async move { resolve_all(&targets).await })
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dns_server {
            Some(dns) => write!(f, "Resolver(DNS server {})", dns.server()),
            None => f.write_str("Resolver"),
        }
    }
}

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
    keepalive: Option<Keepalive>,
    backends: Mutex<Backends<Channel>>,
    last_error: Mutex<Option<String>>,
}

impl Pool {
    /// Resolves once now (a failure is reported per call, not fatal: the name
    /// may appear later) and re-resolves every `resolve_every` in the
    /// background for as long as the pool lives.
    pub(super) async fn start(config: &Config) -> Arc<Self> {
        let pool = Arc::new(Pool {
            targets: config.targets.clone(),
            resolver: config.resolver.clone(),
            timeout: config.timeout,
            keepalive: config.keepalive,
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
        let mut endpoint =
            with_keepalive(Endpoint::from(uri), self.keepalive).connect_timeout(self.timeout);
        if let Ok(origin) = origin {
            endpoint = endpoint.origin(origin);
        }
        endpoint.connect_lazy()
    }

    pub(super) async fn call(&self, shared: &Shared) -> Call {
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

    use hyper::HeaderMap;

    use super::*;
    use crate::grpc::Mode;

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
            keepalive: None,
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
