//! `client-grpc --mode round-robin --dns-server`: the real binary asks a real
//! DNS server (`harness::dns`, on loopback) for a headless-Service-like name
//! whose pods are real echo servers on one port at different 127.55.x.y
//! addresses, as the local mesh runs them.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use common::{CLIENT_GRPC, Running, TestServer, run_client, run_client_with_env, split_call};
use harness::dns::{DnsServer, KUBERNETES_TTL};

const NAME: &str = "server-headless.default.svc.cluster.local";

/// Echo servers named `pods`, the i-th on 127.55.`subnet`.(i+1), all on one
/// gRPC port (returned).
async fn start_pods(subnet: u8, pods: &[&str]) -> (u16, Vec<TestServer>) {
    let addr = |i: usize, port: u16| SocketAddr::from(([127, 55, subnet, i as u8 + 1], port));
    // The first server picks the port; another process may hold it on one
    // of the other addresses: then start over.
    for _ in 0..20 {
        let mut servers: Vec<TestServer> = Vec::new();
        let mut port = 0;
        for (i, pod) in pods.iter().enumerate() {
            let mut config = server::Config::local(*pod);
            config.grpc_addr = addr(i, port);
            config.http_addr = addr(i, 0);
            match TestServer::try_start_with(config).await {
                Ok(server) => {
                    port = server.grpc.port();
                    servers.push(server);
                }
                Err(_) => break,
            }
        }
        if servers.len() == pods.len() {
            return (port, servers);
        }
    }
    panic!("no common free port for {pods:?} on 127.55.{subnet}.x");
}

fn pod_ip(subnet: u8, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 55, subnet, i + 1)
}

fn dns_on(subnet: u8, ttl: Duration) -> DnsServer {
    DnsServer::start(SocketAddr::from(([127, 55, subnet, 53], 0)), ttl).expect("DNS server")
}

/// The pod a `#N: <pod> ...` line names, or "error" for a failed call.
fn pod(line: &str) -> &str {
    let rest = split_call(line).1;
    if rest.starts_with("error:") {
        return "error";
    }
    rest.split_whitespace().next().unwrap_or_default()
}

/// `client-grpc`'s arguments for `--mode round-robin --host HOST
/// --dns-server DNS` and `more` flags.
fn round_robin_args<'a>(host: &'a str, dns: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--host", host, "--mode", "round-robin", "--dns-server", dns];
    args.extend_from_slice(more);
    args
}

/// An address on `ip` where nothing answers DNS: a UDP port bound, then
/// released.
fn silent_dns_server(ip: &str) -> String {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_rotate_over_the_pods_the_name_resolves_to() {
    let (port, _pods) = start_pods(2, &["pod-a", "pod-b", "pod-c"]).await;
    let dns = dns_on(2, KUBERNETES_TTL);
    // pod-c runs but is not in the answer: it must never be called.
    dns.set_a_records(NAME, &[pod_ip(2, 1), pod_ip(2, 0)])
        .unwrap();
    let host = format!("{NAME}:{port}");
    let server = dns.addr().to_string();
    let out = run_client(
        "grpc-dns-rotate",
        CLIENT_GRPC,
        &round_robin_args(&host, &server, &["--count", "6", "--interval", "0"]),
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let pods: Vec<&str> = out.calls().iter().map(|l| pod(l)).collect();
    assert_eq!(
        pods,
        ["pod-a", "pod-b", "pod-a", "pod-b", "pod-a", "pod-b"],
        "{}",
        out.stdout
    );
    let endpoints = format!("round-robin: 2 endpoint(s) [127.55.2.1:{port}, 127.55.2.2:{port}]");
    assert!(out.stderr.contains(&endpoints), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("DNS server {server}")),
        "the start-up line names it: {}",
        out.stderr
    );
}

/// Pods come and go: the name is unknown at start (not fatal), then gets a
/// pod, then a second; each shows up in the calls after a re-resolution.
/// The TTL is 30 s: had the client cached answers, the changes would show
/// only after 30 s, past this test's bound.
#[tokio::test(flavor = "multi_thread")]
async fn pods_added_to_the_answer_are_called_after_the_next_re_resolution() {
    let (port, _pods) = start_pods(3, &["pod-a", "pod-b"]).await;
    let dns = dns_on(3, Duration::from_secs(30));
    let host = format!("{NAME}:{port}");
    let server = dns.addr().to_string();
    let mut client = Running::spawn(
        "grpc-dns-pods-come-and-go",
        CLIENT_GRPC,
        &round_robin_args(
            &host,
            &server,
            &[
                "--resolve-every",
                "300ms",
                "--interval",
                "50ms",
                "--timeout",
                "2s",
            ],
        ),
    );
    // No pods yet: NXDOMAIN, reported per call, the client keeps going.
    let line = client.wait_for_line(|l| l.starts_with('#')).await;
    assert!(
        line.contains("error: UNAVAILABLE") && line.contains("NXDOMAIN"),
        "{line}"
    );

    let bound = Duration::from_secs(10);
    dns.set_a_records(NAME, &[pod_ip(3, 0)]).unwrap();
    let added = Instant::now();
    client
        .wait_for_line(|l| l.starts_with('#') && pod(l) == "pod-a")
        .await;
    assert!(added.elapsed() < bound, "pod-a after {:?}", added.elapsed());

    let before = client.seen.len();
    dns.set_a_records(NAME, &[pod_ip(3, 0), pod_ip(3, 1)])
        .unwrap();
    let added = Instant::now();
    client
        .wait_for_line(|l| l.starts_with('#') && pod(l) == "pod-b")
        .await;
    assert!(added.elapsed() < bound, "pod-b after {:?}", added.elapsed());
    // Before pod-b was in the answer, no call could reach it.
    assert!(
        client.seen[..before].iter().all(|l| !l.contains("pod-b")),
        "{:?}",
        client.seen
    );
    // Once both are known, calls alternate.
    let mut next = Vec::new();
    for _ in 0..4 {
        let line = client.wait_for_line(|l| l.starts_with('#')).await;
        next.push(pod(&line).to_owned());
    }
    assert!(
        next.windows(2).all(|w| w[0] != w[1]) && next.iter().all(|p| p.starts_with("pod-")),
        "{next:?}"
    );

    let out = client.signal_and_finish("INT").await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "round-robin: 2 endpoint(s) [127.55.3.1:{port}, 127.55.3.2:{port}] (added [127.55.3.2:{port}], removed [])"
        )),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_dns_server_is_one_clear_error_and_exit_69_fast() {
    // Bound, then released: nothing answers there.
    let dead = silent_dns_server("127.55.4.53");
    let host = format!("{NAME}:30051");
    let started = Instant::now();
    let out = run_client(
        "grpc-dns-unreachable",
        CLIENT_GRPC,
        &round_robin_args(&host, &dead, &["--timeout", "1s", "--count", "3"]),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(69), "{}", out.stderr);
    let want = format!("client-grpc: DNS server {dead} unreachable: ");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.contains(" INFO "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].starts_with(&want), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no call was made: {}", out.stdout);
    // The probe is bounded by --timeout (1s); generous for a loaded machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// IP-literal targets need no query: a dead DNS server does not matter.
#[tokio::test(flavor = "multi_thread")]
async fn ip_literal_targets_are_not_looked_up() {
    let (port, _pods) = start_pods(5, &["pod-a"]).await;
    let dead = silent_dns_server("127.55.5.53");
    let host = format!("127.55.5.1:{port}");
    let out = run_client(
        "grpc-dns-ip-literal",
        CLIENT_GRPC,
        &round_robin_args(
            &host,
            &dead,
            &["--timeout", "1s", "--count", "2", "--interval", "0"],
        ),
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    let pods: Vec<&str> = out.calls().iter().map(|l| pod(l)).collect();
    assert_eq!(pods, ["pod-a", "pod-a"], "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_server_flag_errors_exit_64() {
    for (args, env, mentions) in [
        (
            &["--host", "x:1", "--dns-server", "127.0.0.1:53"][..],
            &[][..],
            "--dns-server needs --mode round-robin",
        ),
        (
            &["--host", "x:1"],
            &[("CLIENT_DNS_SERVER", "127.0.0.1:53")],
            "--dns-server needs --mode round-robin",
        ),
        (
            &[
                "--host",
                "x:1",
                "--mode",
                "round-robin",
                "--dns-server",
                "kube-dns",
            ],
            &[],
            "is not IP:PORT",
        ),
    ] {
        let out = run_client_with_env("grpc-dns-bad-flags", CLIENT_GRPC, args, env).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(mentions), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
