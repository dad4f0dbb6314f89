//! `client-grpc`'s flags: parsed by clap, checked, and turned into the plain
//! [`Config`] and [`LoopConfig`] the callers run with.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use hyper::http::uri::Authority;

use super::{Config, Keepalive, dns::parse_dns_server, round_robin::Resolver};
use crate::{
    calling_loop::LoopConfig,
    cli::LoopArgs,
    duration::{format_duration, parse_duration},
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

    /// round-robin: resolve the host names by asking only this DNS server
    /// (A records, UDP then TCP; no resolv.conf, no search domains, no
    /// cache), e.g. the local mesh's; default: the system resolver.
    #[arg(long, env = "CLIENT_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<String>,

    /// Send an HTTP/2 PING on every connection this often, with or without
    /// calls in flight (gRPC's keepalive time, PermitWithoutStream); a PING
    /// unanswered for --keepalive-timeout closes the connection, failing its
    /// calls, and the next call reconnects. Default: off, as in gRPC: a
    /// connection to a node that vanished (no FIN, no RST) is then never
    /// closed, and every call on it waits out its deadline.
    #[arg(long, env = "CLIENT_KEEPALIVE_TIME", value_parser = parse_duration, value_name = "DURATION")]
    pub keepalive_time: Option<Duration>,

    /// With --keepalive-time: how long a PING may go unanswered.
    #[arg(long, env = "CLIENT_KEEPALIVE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", default_value = "20s", requires = "keepalive_time")]
    pub keepalive_timeout: Duration,

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
        let resolver = match &self.dns_server {
            None => Resolver::default(),
            Some(_) if self.mode != Mode::RoundRobin => {
                return Err(format!(
                    "--dns-server needs --mode round-robin (mode {} leaves resolving to the connection)",
                    self.mode.name()
                ));
            }
            Some(raw) => Resolver::dns_server(parse_dns_server(raw)?, self.common.timeout)?,
        };
        let keepalive = match self.keepalive_time {
            None => None,
            Some(time) if time.is_zero() => {
                return Err(
                    "--keepalive-time must be greater than 0 (leave it out for no keepalive)"
                        .into(),
                );
            }
            Some(_) if self.keepalive_timeout.is_zero() => {
                return Err("--keepalive-timeout must be greater than 0".into());
            }
            Some(time) => Some(Keepalive {
                time,
                timeout: self.keepalive_timeout,
            }),
        };
        let config = Config {
            targets,
            mode: self.mode,
            concurrency: self.common.concurrency,
            delay: self.delay,
            timeout: self.common.timeout,
            resolve_every: self.resolve_every,
            resolver,
            headers: self.common.headers.iter().cloned().collect(),
            keepalive,
        };
        Ok((config, self.common.loop_config()?))
    }

    pub fn describe(&self) -> String {
        let dns = match &self.dns_server {
            Some(server) => format!(", DNS server {}", server.trim()),
            None => String::new(),
        };
        let keepalive = match self.keepalive_time {
            Some(time) => format!(
                ", keepalive {} (timeout {})",
                format_duration(time),
                format_duration(self.keepalive_timeout)
            ),
            None => String::new(),
        };
        format!(
            "client-grpc: target {}, mode {}{dns}{keepalive}, delay {}, {}",
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn dns_server_needs_round_robin_and_an_ip_and_port() {
        let config = |extra: &[&str]| {
            let mut argv = vec!["client-grpc", "--host", "server:30051"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap().config().map(|(c, _)| c)
        };
        let e = config(&["--dns-server", "127.0.0.1:5353"]).unwrap_err();
        assert!(e.contains("--dns-server needs --mode round-robin"), "{e}");
        let e = config(&["--mode", "round-robin", "--dns-server", "dns:53"]).unwrap_err();
        assert!(e.contains("is not IP:PORT"), "{e}");
        let ok = config(&["--mode", "round-robin", "--dns-server", "127.0.0.1:5353"]).unwrap();
        assert_eq!(
            format!("{:?}", ok.resolver),
            "Resolver(DNS server 127.0.0.1:5353)"
        );
        let default = config(&["--mode", "round-robin"]).unwrap();
        assert_eq!(format!("{:?}", default.resolver), "Resolver");
    }
}
