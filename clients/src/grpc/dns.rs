//! `--dns-server IP:PORT`: round-robin resolves its targets by asking that
//! one DNS server for A records (UDP, TCP when an answer is truncated), as a
//! pod asks the cluster DNS for a headless Service's pods.
//!
//! Nothing else is consulted: no resolv.conf, no search domains (a name is
//! taken as fully qualified), no hosts file. There is no cache either: the
//! client re-resolves every `--resolve-every`, and that interval, not the
//! answer's TTL, is the knob, so each re-resolution is one real query and
//! shows the server's current answer.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData},
    },
};
use hyper::http::uri::Authority;

use super::round_robin::Resolved;
use crate::duration::format_duration;

/// Resolves through one DNS server.
pub struct DnsServer {
    server: SocketAddr,
    timeout: Duration,
    resolver: TokioResolver,
}

/// Why a name did not resolve.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server answered, without addresses (NXDOMAIN, NODATA, SERVFAIL,
    /// ...): the name may get them later.
    Answered(String),
    /// No answer at all (timeout, refused, not a DNS server).
    Unreachable(String),
}

impl DnsServer {
    /// Queries time out after `timeout` (the client's `--timeout`).
    pub fn new(server: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = timeout;
        // No cache (see the module doc): nothing kept, nothing reused.
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        let resolver = builder
            .build()
            .map_err(|e| format!("DNS resolver for {server}: {e}"))?;
        Ok(Self {
            server,
            timeout,
            resolver,
        })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The addresses of one `host:port` target: an IP literal as is, a name
    /// by one A query.
    pub async fn lookup(&self, target: &Authority) -> Result<Vec<SocketAddr>, Failure> {
        // `Authority` keeps an IPv6 literal's brackets; targets always have
        // a port (checked when the flags are parsed).
        let port = target.port_u16().unwrap_or(0);
        let host = target.host();
        if let Some(ip) = ip_literal(target) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut name = Name::from_ascii(host)
            .map_err(|e| Failure::Answered(format!("{host:?} is not a DNS name: {e}")))?;
        name.set_fqdn(true);
        let lookup = tokio::time::timeout(self.timeout, self.resolver.ipv4_lookup(name))
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|e| self.failure(e))?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(SocketAddr::new(a.0.into(), port)),
                _ => None,
            })
            .collect())
    }

    /// Every address of every target; any failure fails the whole
    /// resolution so a partial answer never shrinks the set.
    pub async fn resolve_all(&self, targets: &[Authority]) -> Resolved {
        let mut all = Vec::new();
        for target in targets {
            let addrs = self.lookup(target).await.map_err(|failure| {
                let why = match failure {
                    Failure::Answered(why) | Failure::Unreachable(why) => why,
                };
                format!("cannot resolve {target}: {why}")
            })?;
            all.extend(addrs.into_iter().map(|addr| (addr, target.clone())));
        }
        Ok(all)
    }

    /// One query for the first target that is a name: an error only when the
    /// server does not answer at all. None of the targets is a name: no query.
    pub async fn probe(&self, targets: &[Authority]) -> Result<(), String> {
        let Some(first) = targets.iter().find(|t| ip_literal(t).is_none()) else {
            return Ok(());
        };
        match self.lookup(first).await {
            Err(Failure::Unreachable(why)) => Err(why),
            Ok(_) | Err(Failure::Answered(_)) => Ok(()),
        }
    }

    fn no_answer(&self) -> Failure {
        Failure::Unreachable(format!(
            "DNS server {} unreachable: no answer within {}",
            self.server,
            format_duration(self.timeout)
        ))
    }

    fn failure(&self, e: NetError) -> Failure {
        let server = self.server;
        match e {
            NetError::Dns(DnsError::NoRecordsFound(none)) => {
                Failure::Answered(match none.response_code {
                    ResponseCode::NXDomain => {
                        format!("NXDOMAIN (no such name) from DNS server {server}")
                    }
                    code => format!("no A records ({code}) from DNS server {server}"),
                })
            }
            NetError::Dns(e) => Failure::Answered(format!("{e} from DNS server {server}")),
            NetError::Timeout => self.no_answer(),
            e => Failure::Unreachable(format!("DNS server {server} unreachable: {e}")),
        }
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// `IP:PORT`, or a bare IP for port 53. An IP, not a name: the DNS server's
/// own name would need another resolver.
pub fn parse_dns_server(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    raw.parse::<SocketAddr>()
        .or_else(|_| raw.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            format!("--dns-server {raw:?} is not IP:PORT (e.g. --dns-server 127.0.0.1:5353)")
        })
}

/// The target's host as an IP address, when it is one (`Authority` keeps an
/// IPv6 literal's brackets): no query needed.
fn ip_literal(target: &Authority) -> Option<IpAddr> {
    target
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_server_is_ip_and_port() {
        assert_eq!(
            parse_dns_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("10.96.0.10"),
            Ok("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("[::1]:53"),
            Ok("[::1]:53".parse().unwrap())
        );
        for bad in ["", "kube-dns:53", "127.0.0.1:", "127.0.0.1:99999", "1.2.3"] {
            let e = parse_dns_server(bad).unwrap_err();
            assert!(e.contains("is not IP:PORT"), "{bad:?}: {e}");
        }
    }
}
