//! An in-process authoritative DNS server for names whose A records change
//! during a run: what a Kubernetes headless Service looks like to a client
//! (its name answers with the ready pods' addresses, the set comes and goes).
//!
//! It answers real queries over UDP and TCP on one address, from its own
//! thread and tokio runtime, so synchronous callers (the mesh's engine runs
//! on plain threads) need no runtime. Answers follow CoreDNS's `kubernetes`
//! plugin: authoritative, the configured TTL, NXDOMAIN for a name with no
//! addresses as for an unknown one.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use harness::dns::{DnsServer, KUBERNETES_TTL};
//! # fn main() -> Result<(), harness::Error> {
//! let dns = DnsServer::start("127.0.0.1:0".parse().unwrap(), KUBERNETES_TTL)?;
//! let name = "server-headless.default.svc.cluster.local";
//! dns.set_a_records(name, &[Ipv4Addr::new(127, 10, 0, 1), Ipv4Addr::new(127, 10, 0, 2)])?;
//! println!("client-grpc --dns-server {} ...", dns.addr());
//! dns.set_a_records(name, &[])?; // the last pod went away: NXDOMAIN
//! # Ok(()) }
//! ```

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
        rr::{DNSClass, LowerName, Name, RData, Record, RecordType, rdata::A},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::sync::oneshot;

use crate::{Error, Result};

/// The TTL CoreDNS's `kubernetes` plugin answers with unless its `ttl` option
/// says otherwise: "The default is 5 seconds" (coredns.io/plugins/kubernetes;
/// the Kubernetes docs' "Customizing DNS Service" page says the same).
/// kubeadm's stock Corefile sets `ttl 30`.
pub const KUBERNETES_TTL: Duration = Duration::from_secs(5);

/// How long a TCP client may stay idle before the server closes it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long `Drop` waits for in-flight answers before the runtime goes.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// With port 0, how many UDP ports to try for one whose TCP twin is free.
const PORT_TRIES: usize = 20;

/// A running DNS server; dropping it stops it (thread joined, sockets closed).
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves UDP and TCP on `addr` (port 0: an ephemeral port, the same for
    /// both; see [`DnsServer::addr`]). Every answer carries `ttl`, which must
    /// be whole seconds (DNS TTLs are) and at most 2^31 - 1 (RFC 2181).
    pub fn start(addr: SocketAddr, ttl: Duration) -> Result<DnsServer> {
        let ttl = ttl_seconds(ttl)?;
        let (udp, tcp) = bind(addr)?;
        let addr = udp
            .local_addr()
            .map_err(|e| Error::io(format!("DNS server on {addr}: local address"), e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("DNS server: tokio runtime", e))?;
        let (udp, tcp) = {
            // Registering the sockets with the reactor needs its context.
            let _entered = runtime.enter();
            let context = |e| Error::io(format!("DNS server on {addr}: register socket"), e);
            (
                tokio::net::UdpSocket::from_std(udp).map_err(context)?,
                tokio::net::TcpListener::from_std(tcp).map_err(context)?,
            )
        };
        let zone = Arc::new(Zone {
            ttl,
            names: RwLock::new(HashMap::new()),
            answers: Mutex::new(VecDeque::new()),
        });
        let handler = Handler(zone.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut server = Server::new(handler);
                    server.register_socket(udp);
                    // 64: hickory's own default response buffer per connection.
                    server.register_listener(tcp, TCP_IDLE, 64);
                    // Either a stop or the DnsServer was dropped without one.
                    let _ = stopped.await;
                    let _ = tokio::time::timeout(STOP_GRACE, server.shutdown_gracefully()).await;
                });
                // `runtime` drops here with every task and socket it owns.
            })
            .map_err(|e| Error::io(format!("DNS server on {addr}: spawn thread"), e))?;
        Ok(DnsServer {
            addr,
            zone,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens (UDP and TCP), with the real port when 0 was asked.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TTL every answer carries.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.zone.ttl.into())
    }

    /// The A answers given so far (the latest few thousand), oldest first:
    /// when each client query learned which addresses.
    pub fn answers(&self) -> Vec<Answer> {
        let log = self.zone.answers.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Replaces the A records of `name` (fully qualified, the trailing dot
    /// optional: `server-headless.default.svc.cluster.local`); the next query
    /// sees them. An empty list makes the name NXDOMAIN, as CoreDNS answers
    /// for a headless Service with no ready endpoints (kubernetes/dns#245
    /// changed the spec to match).
    pub fn set_a_records(&self, name: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let key = fqdn(name)?;
        let mut names = self
            .zone
            .names
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ips.is_empty() {
            names.remove(&key);
        } else {
            names.insert(key, ips.to_vec());
        }
        Ok(())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("ttl", &self.zone.ttl)
            .finish_non_exhaustive()
    }
}

fn ttl_seconds(ttl: Duration) -> Result<u32> {
    match u32::try_from(ttl.as_secs()) {
        Ok(secs) if ttl.subsec_nanos() == 0 && secs <= i32::MAX as u32 => Ok(secs),
        _ => Err(Error::Dns(format!(
            "TTL {ttl:?} is not a whole number of seconds from 0 to 2147483647"
        ))),
    }
}

fn fqdn(name: &str) -> Result<LowerName> {
    let mut parsed = Name::from_ascii(name)
        .map_err(|e| Error::Dns(format!("invalid DNS name {name:?}: {e}")))?;
    if parsed.num_labels() == 0 {
        return Err(Error::Dns(format!("invalid DNS name {name:?}: empty")));
    }
    parsed.set_fqdn(true);
    Ok(LowerName::from(parsed))
}

/// UDP and TCP on the same address; with port 0, UDP picks the port and TCP
/// must get the same one, which another process may hold: then try another.
fn bind(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let taken = |proto: &str, e| Error::io(format!("DNS server cannot bind {proto} {addr}"), e);
    let tries = if addr.port() == 0 { PORT_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| taken("UDP", e))?;
        let local = udp.local_addr().map_err(|e| taken("UDP", e))?;
        match std::net::TcpListener::bind(local) {
            Ok(tcp) => {
                for result in [udp.set_nonblocking(true), tcp.set_nonblocking(true)] {
                    result.map_err(|e| taken("UDP/TCP", e))?;
                }
                return Ok((udp, tcp));
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::other("no attempt"));
    Err(taken("TCP", e))
}

/// The names and their addresses, shared with the server's thread.
struct Zone {
    ttl: u32,
    names: RwLock<HashMap<LowerName, Vec<Ipv4Addr>>>,
    /// The latest answers with addresses, oldest first, at most
    /// [`ANSWERS_KEPT`]: when a client learned what (see
    /// [`DnsServer::answers`]).
    answers: Mutex<VecDeque<Answer>>,
}

/// How many answers [`DnsServer::answers`] remembers.
const ANSWERS_KEPT: usize = 4096;

/// An A answer the server gave: when, for which name, which addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub at: Instant,
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
}

struct Handler(Arc<Zone>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let mut answers = Vec::new();
        let is_query = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query;
        match request.request_info() {
            _ if !is_query => metadata.response_code = ResponseCode::NotImp,
            Err(_) => metadata.response_code = ResponseCode::FormErr,
            Ok(info) => {
                let query = info.query;
                let names = self.0.names.read().unwrap_or_else(|p| p.into_inner());
                match names.get(query.name()) {
                    None => metadata.response_code = ResponseCode::NXDomain,
                    // Another type (AAAA, ...) of an existing name: NOERROR,
                    // no records (NODATA), as CoreDNS answers.
                    Some(ips)
                        if matches!(query.query_type(), RecordType::A | RecordType::ANY)
                            && query.query_class() == DNSClass::IN =>
                    {
                        let owner = query.original().name().clone();
                        answers.extend(ips.iter().map(|ip| {
                            Record::from_rdata(owner.clone(), self.0.ttl, RData::A(A(*ip)))
                        }));
                        let mut log = self.0.answers.lock().unwrap_or_else(|p| p.into_inner());
                        if log.len() == ANSWERS_KEPT {
                            log.pop_front();
                        }
                        log.push_back(Answer {
                            at: Instant::now(),
                            name: query.name().to_string(),
                            addresses: ips.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        // EDNS answered in kind, so a resolver that asked for it may take
        // larger UDP answers (many pods) without falling back to TCP.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(metadata, answers.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            // The client went away; nothing more to do for it.
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Real queries over UDP and TCP, from hickory's resolver.
#[cfg(test)]
mod tests {
    use hickory_resolver::{
        TokioResolver,
        config::{NameServerConfig, ResolveHosts, ResolverConfig},
        net::{NetError, runtime::TokioRuntimeProvider},
        proto::op::ResponseCode,
    };

    use super::*;

    const NAME: &str = "server-headless.default.svc.cluster.local";

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 55, 1, last)
    }

    /// A resolver asking only `server`, over one protocol, without a cache,
    /// so each lookup is one query.
    fn resolver(server: SocketAddr, tcp: bool) -> TokioResolver {
        let mut name_server = if tcp {
            NameServerConfig::tcp(server.ip())
        } else {
            NameServerConfig::udp(server.ip())
        };
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = Duration::from_secs(5);
        builder.build().expect("a resolver")
    }

    /// (addresses sorted, their TTLs, authoritative?) of an A lookup.
    async fn lookup_a(
        resolver: &TokioResolver,
        name: &str,
    ) -> Result<(Vec<Ipv4Addr>, Vec<u32>, bool), NetError> {
        let lookup = resolver.ipv4_lookup(format!("{name}.")).await?;
        let mut ips: Vec<Ipv4Addr> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        ips.sort();
        let ttls = lookup.answers().iter().map(|r| r.ttl).collect();
        Ok((ips, ttls, lookup.message().metadata.authoritative))
    }

    fn start() -> DnsServer {
        DnsServer::start("127.55.1.1:0".parse().unwrap(), KUBERNETES_TTL).expect("start")
    }

    #[test]
    fn the_default_ttl_is_corednss() {
        assert_eq!(KUBERNETES_TTL, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn answers_are_authoritative_a_records_with_the_ttl_over_udp_and_tcp() {
        let dns = DnsServer::start("127.55.1.1:0".parse().unwrap(), Duration::from_secs(7))
            .expect("start");
        assert_eq!(dns.ttl(), Duration::from_secs(7));
        dns.set_a_records(NAME, &[ip(3), ip(2)]).unwrap();
        for tcp in [false, true] {
            let (ips, ttls, authoritative) = lookup_a(&resolver(dns.addr(), tcp), NAME)
                .await
                .unwrap_or_else(|e| panic!("tcp={tcp}: {e}"));
            assert_eq!(ips, [ip(2), ip(3)], "tcp={tcp}");
            assert_eq!(ttls, [7, 7], "tcp={tcp}");
            assert!(authoritative, "tcp={tcp}");
        }
        // Case and the trailing dot do not matter, as in DNS.
        let upper = format!("{}.", NAME.to_uppercase());
        let (ips, _, _) = lookup_a(&resolver(dns.addr(), false), &upper[..upper.len() - 1])
            .await
            .unwrap();
        assert_eq!(ips, [ip(2), ip(3)]);
        // Each answer is remembered: when, for which name, which addresses.
        let answers = dns.answers();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(answers.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(answers.iter().all(|a| a.addresses == [ip(3), ip(2)]));
        assert_eq!(answers[0].name, format!("{NAME}."));
    }

    #[tokio::test]
    async fn updates_are_seen_by_the_next_query_and_no_pods_is_nxdomain() {
        let dns = start();
        let resolver = resolver(dns.addr(), false);
        dns.set_a_records(&format!("{NAME}."), &[ip(1)]).unwrap();
        assert_eq!(lookup_a(&resolver, NAME).await.unwrap().0, [ip(1)]);
        dns.set_a_records(NAME, &[ip(1), ip(4)]).unwrap();
        assert_eq!(lookup_a(&resolver, NAME).await.unwrap().0, [ip(1), ip(4)]);
        dns.set_a_records(NAME, &[ip(4)]).unwrap();
        assert_eq!(lookup_a(&resolver, NAME).await.unwrap().0, [ip(4)]);
        dns.set_a_records(NAME, &[]).unwrap();
        let e = lookup_a(&resolver, NAME).await.unwrap_err();
        assert!(e.is_nx_domain(), "{e}");
    }

    #[tokio::test]
    async fn unknown_names_are_nxdomain_and_other_types_nodata() {
        let dns = start();
        dns.set_a_records(NAME, &[ip(1)]).unwrap();
        let resolver = resolver(dns.addr(), false);
        let e = lookup_a(&resolver, "other.default.svc.cluster.local")
            .await
            .unwrap_err();
        assert!(e.is_nx_domain(), "{e}");
        // The name exists, it just has no AAAA: NOERROR with no records.
        let e = resolver.ipv6_lookup(format!("{NAME}.")).await.unwrap_err();
        match &e {
            NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(none)) => {
                assert_eq!(none.response_code, ResponseCode::NoError, "{e}")
            }
            other => panic!("want NODATA, got {other}"),
        }
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_address_and_cause() {
        let udp = std::net::UdpSocket::bind("127.55.1.2:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let e = DnsServer::start(addr, KUBERNETES_TTL)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("cannot bind UDP {addr}")), "{e}");
        assert!(e.contains("in use"), "{e}");

        let tcp = std::net::TcpListener::bind("127.55.1.3:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let e = DnsServer::start(addr, KUBERNETES_TTL)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("cannot bind TCP {addr}")), "{e}");
        assert!(e.contains("in use"), "{e}");
    }

    #[test]
    fn bad_names_and_ttls_are_errors() {
        let e = DnsServer::start("127.55.1.1:0".parse().unwrap(), Duration::from_millis(1500))
            .unwrap_err();
        assert!(e.to_string().contains("whole number of seconds"), "{e}");
        let dns = start();
        for bad in ["", ".", "a..b", &"x".repeat(64)] {
            let e = dns.set_a_records(bad, &[ip(1)]).expect_err(bad).to_string();
            assert!(e.contains("invalid DNS name"), "{bad:?}: {e}");
        }
    }

    #[tokio::test]
    async fn dropping_the_server_frees_its_port_for_a_new_one() {
        let dns = start();
        let addr = dns.addr();
        dns.set_a_records(NAME, &[ip(1)]).unwrap();
        for tcp in [false, true] {
            assert_eq!(
                lookup_a(&resolver(addr, tcp), NAME).await.unwrap().0,
                [ip(1)]
            );
        }
        drop(dns);
        // Both sockets are closed: the same address binds again, UDP and TCP.
        let again = DnsServer::start(addr, KUBERNETES_TTL).expect("the port is free again");
        assert_eq!(again.addr(), addr);
        // And the new one, not a leftover, answers: it knows no names yet.
        let e = lookup_a(&resolver(addr, false), NAME).await.unwrap_err();
        assert!(e.is_nx_domain(), "{e}");
    }
}
