//! The seven experiments: what runs, what the client prints, what a user
//! should conclude — checked, not just shown.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Command,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use harness::process::ChildGuard;
use serde::Serialize;
use sidecar::{
    destination_rule::ClusterPolicy,
    manifests,
    wasm_plugin::{Side, WasmPluginSpec},
};

use wire::{Record, Summary};

use crate::{
    report::{self, ClientOutput},
    topology::{Addresses, Artifacts, GRPC_PORT, Layout, Mesh},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Id {
    HttpL4,
    GrpcL4,
    GrpcMesh,
    OnePerConn,
    Reuse,
    Tight,
    ClientRoundRobin,
}

pub struct Scenario {
    pub id: Id,
    pub number: u8,
    pub name: &'static str,
    pub title: &'static str,
    pub expected: &'static str,
}

pub const SCENARIOS: [Scenario; 7] = [
    Scenario {
        id: Id::HttpL4,
        number: 1,
        name: "http-l4",
        title: "HTTP client (no keep-alive) via the L4 Service (kube-proxy)",
        expected: "a new connection per call, each sent to a pod kube-proxy picks at random, so calls spread over the pods (not evenly)",
    },
    Scenario {
        id: Id::GrpcL4,
        number: 2,
        name: "grpc-l4",
        title: "gRPC client via the L4 Service (kube-proxy)",
        expected: "one HTTP/2 connection, balanced once: every call lands on the same pod (the problem)",
    },
    Scenario {
        id: Id::GrpcMesh,
        number: 3,
        name: "grpc-mesh",
        title: "gRPC client via its sidecar (Istio defaults, no DestinationRule)",
        expected: "the sidecar balances each request: calls spread over every pod, on one long-lived connection per pod whose request count grows",
    },
    Scenario {
        id: Id::OnePerConn,
        number: 4,
        name: "one-per-conn",
        title: "DestinationRule one-per-conn (maxRequestsPerConnection: 1)",
        expected: "every response says request 1, each on a fresh connection id",
    },
    Scenario {
        id: Id::Reuse,
        number: 5,
        name: "reuse",
        title: "DestinationRule reuse (ROUND_ROBIN, maxRequestsPerConnection: 100)",
        expected: "pods rotate call by call; each connection's count climbs to 100, then a new connection starts again at 1",
    },
    Scenario {
        id: Id::Tight,
        number: 6,
        name: "tight",
        title: "DestinationRule tight (1 connection, 1 pending, 1 request) with 4 concurrent callers",
        expected: "calls beyond the one allowed in flight fail fast with UNAVAILABLE (overflow); the client reports them and keeps going",
    },
    Scenario {
        id: Id::ClientRoundRobin,
        number: 7,
        name: "client-rr",
        title: "client-side round robin over the pod addresses (headless Service), no sidecar",
        expected: "the client opens one connection per pod and rotates calls over them",
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS
        .iter()
        .find(|s| s.name == name || s.number.to_string() == name)
}

/// Knobs shared by every scenario.
#[derive(Clone, Debug)]
pub struct Options {
    pub calls: u64,
    pub pods: usize,
    pub subnet: u8,
    /// Print every client line instead of a trimmed view.
    pub all_lines: bool,
    /// Print nothing but the final JSON.
    pub quiet: bool,
    /// Pod names derive from it (`topology::name_seed()`).
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub number: u8,
    pub title: &'static str,
    pub command: String,
    pub expected: &'static str,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// The clients' own summary of `calls`.
    #[serde(serialize_with = "report::serialize_summary")]
    pub summary: Summary,
    /// The client's records, in its `--json` form.
    pub calls: Vec<Record>,
    pub logs: String,
}

/// The DestinationRule a scenario applies, if any.
fn experiment(id: Id) -> Option<&'static str> {
    match id {
        Id::OnePerConn => Some("one-per-conn"),
        Id::Reuse => Some("reuse"),
        Id::Tight => Some("tight"),
        _ => None,
    }
}

pub fn run(
    scenario: &Scenario,
    options: &Options,
    artifacts: &Artifacts,
    istio_dir: &Path,
    plugin: &WasmPluginSpec,
) -> anyhow::Result<Outcome> {
    let mut warnings = plugin.warnings.clone();
    let (policies, notes) =
        manifests::experiment(istio_dir, experiment(scenario.id).unwrap_or("none"))?;
    let policy = experiment(scenario.id).map(|_| policies.outbound.clone());
    let layout = match scenario.id {
        Id::HttpL4 | Id::GrpcL4 => Layout {
            l4_service: true,
            sidecars: None,
        },
        Id::GrpcMesh | Id::OnePerConn | Id::Reuse | Id::Tight => {
            warnings.extend(notes);
            Layout {
                l4_service: false,
                sidecars: Some(policies),
            }
        }
        Id::ClientRoundRobin => Layout::default(),
    };
    let addrs = Addresses {
        subnet: options.subnet,
        pods: options.pods,
    };
    let mesh = Mesh::start(
        artifacts,
        addrs,
        &layout,
        plugin,
        scenario.name,
        options.seed,
    )?;
    if !options.quiet {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }

    let mut calls = options.calls;
    let mut interval = "0";
    let (binary, args): (&str, Vec<String>) = match scenario.id {
        Id::HttpL4 => {
            // kube-proxy picks at random: enough calls that reaching a
            // single pod would be a bug, not bad luck (3 pods: 3^-29).
            calls = calls.max(30);
            (
                "client-http",
                vec![
                    "--url".into(),
                    format!("http://{}/pod", addrs.service_http()),
                ],
            )
        }
        Id::GrpcL4 => (
            "client-grpc",
            vec!["--host".into(), addrs.service_grpc().to_string()],
        ),
        Id::GrpcMesh => {
            // Istio's default LEAST_REQUEST picks at random among idle pods:
            // with too few calls a pod could be missed by chance.
            calls = calls.max(30);
            (
                "client-grpc",
                vec!["--host".into(), addrs.client_sidecar().to_string()],
            )
        }
        Id::OnePerConn => (
            "client-grpc",
            vec!["--host".into(), addrs.client_sidecar().to_string()],
        ),
        Id::Reuse => {
            // Enough calls for every pod's connection to reach the limit and roll over.
            let limit = policy
                .as_ref()
                .and_then(|p: &ClusterPolicy| p.max_requests_per_connection)
                .context("the reuse DestinationRule sets no maxRequestsPerConnection")?;
            calls = calls.max(u64::from(limit) * options.pods as u64 + options.pods as u64 * 2);
            (
                "client-grpc",
                vec!["--host".into(), addrs.client_sidecar().to_string()],
            )
        }
        Id::Tight => {
            calls = calls.max(24);
            interval = "100ms";
            (
                "client-grpc",
                vec![
                    "--host".into(),
                    addrs.client_sidecar().to_string(),
                    "--concurrency".into(),
                    "4".into(),
                    "--delay".into(),
                    "100ms".into(),
                ],
            )
        }
        Id::ClientRoundRobin => {
            let pods: Vec<String> = (0..options.pods)
                .map(|i| addrs.app_grpc(i).to_string())
                .collect();
            (
                "client-grpc",
                vec![
                    "--mode".into(),
                    "round-robin".into(),
                    "--host".into(),
                    pods.join(","),
                ],
            )
        }
    };
    let mut command = Command::new(artifacts.bin(binary));
    // Records as JSON, read back as data; the `#N:` lines shown are the
    // client's own, printed from those records by its formatter. One summary
    // line, at the end, whatever CLIENT_SUMMARY_EVERY says.
    command.args(&args).args([
        "--count",
        &calls.to_string(),
        "--interval",
        interval,
        "--timeout",
        "3s",
        "--json",
        "--summary-every",
        "0",
    ]);
    let shown_command = format!(
        "{binary} {} --count {calls} --interval {interval}",
        args.join(" ")
    );
    if !options.quiet {
        println!(
            "\n== {}. {} ({})\n   $ {shown_command}",
            scenario.number, scenario.title, scenario.name
        );
    }

    let client_log = mesh.dir.join(format!("{binary}.stderr.log"));
    let mut client = ChildGuard::spawn_piped(binary, &mut command, &client_log)?;
    let stdout = client.take_stdout().context("client stdout")?;
    let watchdog = watchdog(client.pid(), Duration::from_secs(30 + calls / 10));
    let mut output = ClientOutput::default();
    let mut printer = LinePrinter::new(options.all_lines || options.quiet);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the client's output")?;
        let is_record = output
            .push_line(&line)
            .with_context(|| format!("{binary}'s output (stderr in {})", client_log.display()))?;
        if is_record
            && !options.quiet
            && let Some((record, before)) = output.records.split_last()
        {
            printer.offer(record, before);
        }
    }
    drop(watchdog);
    let status = client.wait_for_exit(Duration::from_secs(5))?;
    if !options.quiet {
        printer.finish();
    }

    let ClientOutput {
        records,
        summary,
        summarised,
    } = output;
    let mut problems = check(
        scenario.id,
        &summary,
        &records,
        options.pods,
        policy.as_ref(),
    );
    if records.len() as u64 != calls || !summarised {
        problems.push(format!(
            "the client printed {} call records{}, expected {calls} and its summary (exit {status}; stderr in {})",
            records.len(),
            if summarised { "" } else { " and no summary" },
            client_log.display()
        ));
    }
    let envoy_errors = mesh.envoy_errors();
    if !envoy_errors.is_empty() {
        problems.push(format!("Envoy logged errors:\n{}", envoy_errors.join("\n")));
    }
    let passed = problems.is_empty();
    if !options.quiet {
        print!("{}", report::table(&summary));
        println!("   expected: {}", scenario.expected);
        if passed {
            println!("   [PASS]");
        } else {
            println!("   [FAIL] {}", problems.join("; "));
            println!("   logs and rendered Envoy configs: {}", mesh.dir.display());
        }
    }
    Ok(Outcome {
        scenario: scenario.name,
        number: scenario.number,
        title: scenario.title,
        command: shown_command,
        expected: scenario.expected,
        passed,
        problems,
        warnings,
        summary,
        calls: records,
        logs: mesh.dir.display().to_string(),
    })
}

/// Kills `pid` unless dropped before `after`: no scenario can hang the demo.
fn watchdog(pid: u32, after: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    tx
}

/// The expectation of each scenario, as checks on what the client printed.
pub fn check(
    id: Id,
    s: &Summary,
    calls: &[Record],
    pods: usize,
    policy: Option<&ClusterPolicy>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let reached = s.pods.len();
    let connections = s.connections().unwrap_or(0);
    let max_requests_per_connection = s.max_connection_requests().unwrap_or(0);
    match id {
        Id::HttpL4 => {
            // Random per connection: spread, but a pod may be missed, and
            // the shares are uneven; only "stuck on one pod" is wrong.
            let spread = pods.min(2);
            expect(
                reached >= spread,
                format!("reached {reached} of {pods} pods, expected at least {spread}"),
            );
            expect(s.errors == 0, format!("{} errors", s.errors));
            // No keep-alive: every answer is the first on its connection.
            expect(
                connections == s.ok,
                format!("{connections} fresh connections for {} answers", s.ok),
            );
        }
        Id::ClientRoundRobin => {
            expect(reached == pods, format!("reached {reached} of {pods} pods"));
            expect(s.errors == 0, format!("{} errors", s.errors));
            // Connections as the servers counted them (conn-requests=1
            // opens one): exactly one per pod, each reused.
            expect(
                connections == pods as u64,
                format!("{connections} connections for {pods} pods, expected one each"),
            );
            expect(
                max_requests_per_connection > 1 || s.ok <= pods as u64,
                "connections were not reused".into(),
            );
        }
        Id::GrpcL4 => {
            expect(
                reached == 1,
                format!("reached {reached} pods, expected exactly 1"),
            );
            expect(s.errors == 0, format!("{} errors", s.errors));
            let counts: Vec<u64> = calls.iter().filter_map(|c| c.call.conn_requests).collect();
            expect(
                counts.windows(2).all(|w| w[1] == w[0] + 1),
                "the server's per-connection count did not grow by one each call".into(),
            );
        }
        Id::GrpcMesh => {
            expect(reached == pods, format!("reached {reached} of {pods} pods"));
            expect(s.errors == 0, format!("{} errors", s.errors));
            expect(
                s.all_tagged(),
                "some responses lack the filter's tags".into(),
            );
            expect(
                connections == reached as u64,
                format!("{connections} connections for {reached} pods, expected one each"),
            );
            expect(
                max_requests_per_connection > 1,
                "connection counts never grew".into(),
            );
        }
        Id::OnePerConn => {
            expect(
                s.all_tagged(),
                "some responses lack the filter's tags".into(),
            );
            let not_first: Vec<u64> = calls
                .iter()
                .filter(|c| c.call.outcome.is_ok())
                .filter(|c| c.call.upstream_connection_requests() != Some(1))
                .map(|c| c.n)
                .collect();
            expect(
                not_first.is_empty(),
                format!("calls {not_first:?} were not request 1"),
            );
            expect(
                connections == s.ok,
                format!("{connections} connection ids for {} answers", s.ok),
            );
            // Envoy may reset a stream racing the close (envoy#8817): tolerated, reported.
            expect(
                s.errors * 10 <= s.calls,
                format!("{} of {} calls failed", s.errors, s.calls),
            );
        }
        Id::Reuse => {
            let limit = policy
                .and_then(|p| p.max_requests_per_connection)
                .unwrap_or(0) as u64;
            expect(reached == pods, format!("reached {reached} of {pods} pods"));
            expect(s.errors == 0, format!("{} errors", s.errors));
            expect(
                max_requests_per_connection == limit,
                format!(
                    "max requests per connection {max_requests_per_connection} != limit {limit}"
                ),
            );
            expect(
                connections > reached as u64,
                format!("no connection rolled over ({connections} connections)"),
            );
        }
        Id::Tight => {
            // Envoy's circuit breaker, not some other failure: UNAVAILABLE
            // with `reset reason: overflow` in the message.
            let overflow = calls
                .iter()
                .filter_map(|c| c.call.outcome.as_ref().err())
                .filter(|e| e.code == "UNAVAILABLE" && e.message.contains("overflow"))
                .count() as u64;
            expect(
                overflow > 0,
                "no call overflowed (UNAVAILABLE ... overflow)".into(),
            );
            expect(s.ok > 0, "no call succeeded".into());
            expect(
                s.errors == overflow,
                format!(
                    "errors other than overflow: {} of {} ({:?})",
                    s.errors - overflow,
                    s.errors,
                    s.errors_by_code
                ),
            );
        }
    }
    problems
}

/// Shows what `kubectl logs` would, trimmed for long runs: the first lines,
/// every line that opens a new connection or fails (up to a cap), the last.
struct LinePrinter {
    all: bool,
    shown: usize,
    hidden: usize,
    last: Option<String>,
}

const HEAD: usize = 6;
const CAP: usize = 16;

impl LinePrinter {
    fn new(all: bool) -> Self {
        Self {
            all,
            shown: 0,
            hidden: 0,
            last: None,
        }
    }

    /// `record` as the client prints it (its own formatter), or hidden.
    fn offer(&mut self, record: &Record, before: &[Record]) {
        let first_on_connection = |r: &Record| r.call.upstream_connection_requests() == Some(1);
        let new_connection = first_on_connection(record)
            && before.iter().filter(|r| first_on_connection(r)).count() < CAP;
        let interesting = self.shown < HEAD
            || (self.shown < CAP && (new_connection || record.call.outcome.is_err()));
        let line = record.text_line();
        if self.all || interesting {
            self.flush_hidden();
            println!("{line}");
            self.shown += 1;
            self.last = None;
        } else {
            self.hidden += 1;
            self.last = Some(line);
        }
    }

    fn flush_hidden(&mut self) {
        match (self.hidden, self.last.take()) {
            (0, _) | (_, None) => {}
            (1, Some(last)) => println!("{last}"),
            (n, Some(last)) => {
                println!(
                    "   ⋮ ({} lines not shown; --all-lines shows every line)",
                    n - 1
                );
                println!("{last}");
            }
        }
        self.hidden = 0;
    }

    fn finish(&mut self) {
        self.flush_hidden();
    }
}

/// Fail fast, before starting anything, when the inputs are broken.
pub fn preflight(istio_dir: &Path) -> anyhow::Result<WasmPluginSpec> {
    let plugin = manifests::wasm_plugin(istio_dir)?;
    for name in manifests::EXPERIMENTS {
        manifests::destination_rule(istio_dir, name)?;
    }
    manifests::inbound_policy(istio_dir)?;
    if !plugin.applies(Side::Server, GRPC_PORT) {
        bail!(
            "the WasmPlugin does not select the server sidecars' inbound port {GRPC_PORT} \
             (spec.match: mode SERVER or CLIENT_AND_SERVER, and ports empty or listing {GRPC_PORT}): \
             the scenarios read the tags it adds there"
        );
    }
    Ok(plugin)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wire::{Call, Record, Summary};

    use super::{Id, check};

    /// An answer as the client records it: the pod, the server's count on
    /// the connection, and the caller's address the server saw (one per
    /// connection).
    fn answer(n: u64, pod: &str, conn_requests: u64, peer: &str) -> Record {
        let mut call = Call::ok(pod);
        call.conn_requests = Some(conn_requests);
        call.peer = Some(peer.into());
        Record {
            n,
            latency: Duration::ZERO,
            call,
        }
    }

    fn failure(n: u64, code: &str, message: &str) -> Record {
        Record {
            n,
            latency: Duration::ZERO,
            call: Call::error(code, message),
        }
    }

    fn problems(id: Id, records: &[Record], pods: usize) -> Vec<String> {
        let mut summary = Summary::default();
        records.iter().for_each(|r| summary.add(r));
        check(id, &summary, records, pods, None)
    }

    #[test]
    fn client_round_robin_needs_exactly_one_reused_connection_per_pod() {
        let one_each = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 2, "c:1"),
            answer(4, "b", 2, "c:2"),
        ];
        assert_eq!(
            problems(Id::ClientRoundRobin, &one_each, 2),
            Vec::<String>::new()
        );
        // Both pods reached, but `a` on two connections.
        let two_for_a = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 1, "c:3"),
            answer(4, "b", 2, "c:2"),
        ];
        let found = problems(Id::ClientRoundRobin, &two_for_a, 2);
        assert!(
            found.iter().any(|p| p.contains("3 connections for 2 pods")),
            "{found:?}"
        );
    }

    #[test]
    fn http_without_keepalive_needs_a_fresh_connection_per_call() {
        let fresh = [answer(1, "a", 1, "c:1"), answer(2, "b", 1, "c:2")];
        assert_eq!(problems(Id::HttpL4, &fresh, 2), Vec::<String>::new());
        let reused = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 2, "c:1"),
        ];
        let found = problems(Id::HttpL4, &reused, 2);
        assert!(
            found
                .iter()
                .any(|p| p.contains("2 fresh connections for 3 answers")),
            "{found:?}"
        );
    }

    #[test]
    fn http_via_random_l4_needs_spread_not_every_pod() {
        let two_of_three = [
            answer(1, "a", 1, "c:1"),
            answer(2, "a", 1, "c:2"),
            answer(3, "b", 1, "c:3"),
        ];
        assert_eq!(problems(Id::HttpL4, &two_of_three, 3), Vec::<String>::new());
        let stuck = [answer(1, "a", 1, "c:1"), answer(2, "a", 1, "c:2")];
        let found = problems(Id::HttpL4, &stuck, 3);
        assert!(
            found.iter().any(|p| p.contains("reached 1 of 3 pods")),
            "{found:?}"
        );
        assert_eq!(problems(Id::HttpL4, &stuck, 1), Vec::<String>::new());
    }

    #[test]
    fn tight_pool_errors_must_be_overflow() {
        let overflow = [
            answer(1, "a", 1, "c:1"),
            failure(
                2,
                "UNAVAILABLE",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
        ];
        assert_eq!(problems(Id::Tight, &overflow, 3), Vec::<String>::new());
        let refused = [
            answer(1, "a", 1, "c:1"),
            failure(2, "UNAVAILABLE", "connection refused"),
        ];
        let found = problems(Id::Tight, &refused, 3);
        assert!(
            found.iter().any(|p| p.contains("no call overflowed")),
            "{found:?}"
        );
    }

    #[test]
    fn grpc_through_l4_must_stay_on_one_pod() {
        let pinned = [answer(1, "a", 1, "c:1"), answer(2, "a", 2, "c:1")];
        assert_eq!(problems(Id::GrpcL4, &pinned, 3), Vec::<String>::new());
        let spread = [answer(1, "a", 1, "c:1"), answer(2, "b", 1, "c:2")];
        assert!(!problems(Id::GrpcL4, &spread, 3).is_empty());
    }
}
