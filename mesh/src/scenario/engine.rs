//! The one engine: resolve a scenario into a [`Plan`] (topology and client
//! command line), start that topology, run the client, read its records,
//! print what a user reads, and judge them with the scenario's check.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
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

use super::{
    Calls, ClientPath, Event, Pods, Scenario,
    check::Evidence,
    events::{self, Happened},
};
use crate::{
    report::{self, ClientOutput, LinePrinter},
    topology::{Addresses, Artifacts, GRPC_PORT, Layout, Mesh},
};

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
    /// What was done to the pods during the run.
    pub events: Vec<Happened>,
    /// Which pod served calls when.
    pub timeline: report::Timeline,
    /// How many calls failed, from when to when (scenarios with events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<report::FailureWindow>,
    /// What the client sidecar retried (sidecar scenarios with events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar_retries: Option<report::SidecarRetries>,
    /// When the cluster DNS answered the client, and with how many pods
    /// (scenarios that resolve the headless Service).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_answers: Vec<DnsAnswer>,
    /// Connections the client opened to its sidecar (sidecar scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_connections_to_sidecar: Option<u64>,
    pub logs: String,
}

/// A scenario resolved against the options and our manifests: what will
/// run, before anything starts.
#[derive(Debug)]
pub struct Plan {
    pub addrs: Addresses,
    pub layout: Layout,
    /// The client sidecar's outbound policy, when a DestinationRule applies.
    pub policy: Option<ClusterPolicy>,
    pub warnings: Vec<String>,
    pub binary: &'static str,
    /// The client's arguments before `--count`.
    pub args: Vec<String>,
    pub calls: u64,
    pub interval: &'static str,
}

impl Plan {
    pub fn new(
        scenario: &Scenario,
        options: &Options,
        istio_dir: &Path,
        plugin: &WasmPluginSpec,
    ) -> anyhow::Result<Self> {
        let rule = scenario.destination_rule;
        let (policies, notes) = manifests::experiment(istio_dir, rule.unwrap_or("none"))?;
        let policy = rule.map(|_| policies.outbound.clone());
        let mut warnings = plugin.warnings.clone();
        if scenario.path == ClientPath::Sidecar {
            warnings.extend(notes);
        }
        let addrs = Addresses {
            subnet: options.subnet,
            pods: match scenario.pods {
                Pods::Flag => options.pods,
                Pods::Exactly(n) => n,
            },
        };
        let client = &scenario.client;
        let calls = match client.calls {
            Calls::Flag => options.calls,
            Calls::AtLeast(n) => options.calls.max(n),
            Calls::PastConnectionLimit => {
                let limit = policy
                    .as_ref()
                    .and_then(|p| p.max_requests_per_connection)
                    .with_context(|| {
                        format!(
                            "the {} DestinationRule sets no maxRequestsPerConnection",
                            rule.unwrap_or("scenario's")
                        )
                    })?;
                let pods = addrs.pods as u64;
                options.calls.max(u64::from(limit) * pods + pods * 2)
            }
        };
        let target = scenario.path.target(&addrs, client.binary)?;
        Ok(Self {
            addrs,
            layout: scenario.path.layout(
                policies,
                scenario.server_args.iter().map(|a| a.to_string()).collect(),
            ),
            policy,
            warnings,
            binary: client.binary.name(),
            args: client
                .args
                .iter()
                .map(|a| {
                    a.replace("{target}", &target)
                        .replace("{dns}", &addrs.dns().to_string())
                })
                .collect(),
            calls,
            interval: client.interval,
        })
    }

    /// The client's command line as the user would type it.
    pub fn shown_command(&self) -> String {
        format!(
            "{} {} --count {} --interval {}",
            self.binary,
            self.args.join(" "),
            self.calls,
            self.interval
        )
    }

    /// The client's command: records as JSON, read back as data (the `#N:`
    /// lines shown are the client's own, printed from those records by its
    /// formatter); one summary line, at the end, whatever
    /// CLIENT_SUMMARY_EVERY says.
    fn client_command(&self, artifacts: &Artifacts) -> Command {
        let mut command = Command::new(artifacts.bin(self.binary));
        command.args(&self.args).args([
            "--count",
            &self.calls.to_string(),
            "--interval",
            self.interval,
            "--json",
            "--summary-every",
            "0",
        ]);
        // A deadline well above any call's; a scenario about deadlines sets
        // its own in its arguments.
        if !self
            .args
            .iter()
            .any(|a| a == "--timeout" || a.starts_with("--timeout="))
        {
            command.args(["--timeout", "3s"]);
        }
        command
    }
}

/// Run `scenario` from start to verdict; every process it started is
/// stopped when this returns.
pub fn run_scenario(
    scenario: &Scenario,
    options: &Options,
    artifacts: &Artifacts,
    istio_dir: &Path,
    plugin: &WasmPluginSpec,
) -> anyhow::Result<Outcome> {
    let plan = Plan::new(scenario, options, istio_dir, plugin)?;
    let mut mesh = Mesh::start(
        artifacts,
        plan.addrs,
        &plan.layout,
        plugin,
        scenario.name,
        options.seed,
    )?;
    let shown_command = plan.shown_command();
    if !options.quiet {
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "\n== {}. {} ({})\n   $ {shown_command}",
            scenario.number, scenario.title, scenario.name
        );
    }

    let client = run_client(&plan, &mut mesh, artifacts, options, scenario.events)?;
    let ClientOutput {
        records,
        summary,
        summarised,
    } = client.output;
    let pods = mesh.pod_names();
    let dns_answers: Vec<DnsAnswer> = mesh
        .dns_answers()
        .into_iter()
        .map(|a| DnsAnswer {
            t_ms: a.at.saturating_duration_since(client.start).as_millis() as u64,
            addresses: a.addresses.len(),
        })
        .collect();
    let sidecar_counts = mesh.client_sidecar_counts();
    let client_connections = sidecar_counts.map(|c| c.client_connections);
    let starts = call_starts(&records, client.start_wall);
    let mut problems = client.problems;
    problems.extend((scenario.check)(&Evidence {
        summary: &summary,
        calls: &records,
        starts: &starts,
        pods: plan.addrs.pods,
        pod_names: &pods,
        events: &client.events,
        dns_answers: &dns_answers,
        client_connections,
        policy: plan.policy.as_ref(),
    }));
    if records.len() as u64 != plan.calls || !summarised {
        problems.push(format!(
            "the client printed {} call records{}, expected {} and its summary (exit {}; stderr in {})",
            records.len(),
            if summarised { "" } else { " and no summary" },
            plan.calls,
            client.status,
            client.log.display()
        ));
    }
    let envoy_errors = mesh.envoy_errors();
    if !envoy_errors.is_empty() {
        problems.push(format!("Envoy logged errors:\n{}", envoy_errors.join("\n")));
    }
    let passed = problems.is_empty();
    let timeline = report::Timeline::new(&records, &client.times, &pods, &client.events);
    // How long a pod's loss cost: only where pods come and go (elsewhere,
    // as in `tight`, failures interleave with answers and the table says it).
    let failures = (!scenario.events.is_empty())
        .then(|| report::failure_window(&records, &client.times))
        .flatten();
    // What the client sidecar hid, where pods came and went.
    let retries = sidecar_counts
        .filter(|_| !scenario.events.is_empty())
        .map(|c| report::SidecarRetries {
            retried: c.retried,
            connect_failures: c.connect_failures,
        });
    if !options.quiet {
        print!("{}", report::table(&summary));
        print!("{}", timeline.text());
        if let Some(failures) = &failures {
            println!("   {failures}");
        }
        if let Some(retries) = &retries {
            println!("   {retries}");
        }
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
        warnings: plan.warnings,
        summary,
        calls: records,
        events: client.events,
        timeline,
        failures,
        sidecar_retries: retries,
        dns_answers,
        client_connections_to_sidecar: client_connections,
        logs: mesh.dir.display().to_string(),
    })
}

/// One answer of the cluster DNS, on the client's clock.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DnsAnswer {
    pub t_ms: u64,
    /// How many pod addresses it listed.
    pub addresses: usize,
}

/// What the client printed and when, how it exited, where its stderr is,
/// and the events applied while it ran.
struct ClientRun {
    /// When the client was started: t = 0.
    start: Instant,
    /// The same moment by the wall clock, which the client stamps its calls
    /// with.
    start_wall: SystemTime,
    output: ClientOutput,
    /// When each record arrived, after the client started.
    times: Vec<Duration>,
    events: Vec<Happened>,
    /// Events that could not be applied, or never came.
    problems: Vec<String>,
    status: ExitStatus,
    log: PathBuf,
}

/// When each of `records` started, on the run's clock (t = 0 at
/// `start_wall`, when the client was started): the client's own stamp,
/// exact to the microsecond, where the arrival of its line is late by
/// however long the client took to print it and the engine to read it.
fn call_starts(records: &[Record], start_wall: SystemTime) -> Vec<Duration> {
    records
        .iter()
        .map(|r| r.started.duration_since(start_wall).unwrap_or_default())
        .collect()
}

/// Run the plan's client against `mesh`, reading its records as they come,
/// showing them (trimmed) unless quiet, and applying `events` on time.
fn run_client(
    plan: &Plan,
    mesh: &mut Mesh,
    artifacts: &Artifacts,
    options: &Options,
    events: &[Event],
) -> anyhow::Result<ClientRun> {
    let binary = plan.binary;
    let log = mesh.dir.join(format!("{binary}.stderr.log"));
    let mut command = plan.client_command(artifacts);
    let mut client = ChildGuard::spawn_piped(binary, &mut command, &log)?;
    let (start, start_wall) = (Instant::now(), SystemTime::now());
    let stdout = client.take_stdout().context("client stdout")?;
    let watchdog = watchdog(client.pid(), Duration::from_secs(30 + plan.calls / 10));
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let failed = line.is_err();
            if lines_tx.send((start.elapsed(), line)).is_err() || failed {
                return;
            }
        }
    });
    let mut run = ClientRun {
        start,
        start_wall,
        output: ClientOutput::default(),
        times: Vec::new(),
        events: Vec::new(),
        problems: Vec::new(),
        status: ExitStatus::default(),
        log,
    };
    let mut printer = LinePrinter::new(options.all_lines || options.quiet);
    let mut pending = events.iter();
    let mut next = pending.next();
    // When the next event is due; a kill waits for a call to be in flight.
    let mut due = next.map(|e| start + e.at);
    let mut timing = Timing::OnTime;
    loop {
        let received = match due {
            Some(due) => lines.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => lines
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok((at, line)) => {
                let line = line.context("reading the client's output")?;
                let is_record = run.output.push_line(&line).with_context(|| {
                    format!("{binary}'s output (stderr in {})", run.log.display())
                })?;
                if is_record {
                    run.times.push(at);
                    if !options.quiet
                        && let Some(record) = run.output.records.last()
                    {
                        printer.offer(record);
                    }
                    if timing == Timing::AwaitingCallEnd {
                        // The client sent its next call as this one ended.
                        timing = Timing::MidCall;
                        due = Some(Instant::now() + INTO_THE_NEXT_CALL);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(event) = next else { continue };
                if timing == Timing::OnTime && event.action.lands_mid_call() {
                    timing = Timing::AwaitingCallEnd;
                    due = Some(Instant::now() + CALL_END_WAIT);
                    continue;
                }
                timing = Timing::OnTime;
                match events::apply(event, mesh, &run.output.records, start) {
                    Ok(happened) => {
                        if !options.quiet {
                            printer.event(&happened.line());
                        }
                        run.events.push(happened);
                        next = pending.next();
                    }
                    Err(e) => {
                        // The rest of the plan cannot run on a mesh in an
                        // unknown state; the client finishes on its own.
                        run.problems.push(format!(
                            "the event at t={:.2}s failed: {e:#}",
                            event.at.as_secs_f64()
                        ));
                        next = None;
                        pending = [].iter();
                    }
                }
                due = next.map(|e| (start + e.at).max(Instant::now()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(watchdog);
    if let Some(event) = next {
        run.problems.push(format!(
            "the event at t={:.2}s never ran: the client finished at t={:.2}s (give it more --calls)",
            event.at.as_secs_f64(),
            start.elapsed().as_secs_f64()
        ));
    }
    run.status = client.wait_for_exit(Duration::from_secs(5))?;
    if !options.quiet {
        printer.finish();
    }
    Ok(run)
}

/// Where a due event stands: a kill is applied while a call is in flight,
/// as a pod dies under load (the demo's client makes one call at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    /// Apply when due.
    OnTime,
    /// Due, waiting for the client's current call to end (its next one
    /// starts at once: `--interval 0`).
    AwaitingCallEnd,
    /// A call just started: apply a moment into it.
    MidCall,
}

/// How far into the next call a kill lands (the scenarios that kill hold
/// each call 100 ms).
const INTO_THE_NEXT_CALL: Duration = Duration::from_millis(20);
/// How long a kill waits for a call to end before it goes ahead anyway.
const CALL_END_WAIT: Duration = Duration::from_secs(1);

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
    use super::*;
    use crate::scenario::SCENARIOS;

    fn options() -> Options {
        Options {
            calls: 12,
            pods: 3,
            subnet: 10,
            all_lines: false,
            quiet: true,
            seed: 7,
        }
    }

    /// The command lines `make demo` prints with the default flags.
    #[test]
    fn plans_give_each_client_its_command_line() {
        let istio_dir = manifests::istio_dir(None);
        let plugin = preflight(&istio_dir).unwrap();
        let expected = [
            "client-http --url http://127.10.2.1:80/pod --count 30 --interval 0",
            "client-grpc --host 127.10.2.1:30051 --count 12 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --count 30 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --count 12 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --count 306 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --concurrency 4 --delay 100ms --count 24 --interval 100ms",
            "client-grpc --mode round-robin --host 127.10.1.1:30051,127.10.1.2:30051,127.10.1.3:30051 --count 12 --interval 0",
            "client-grpc --host 127.10.2.1:30051 --count 60 --interval 50ms",
            "client-grpc --host 127.10.3.1:30051 --count 100 --interval 50ms",
            "client-grpc --mode round-robin --host server-headless.default.svc.cluster.local:30051 --dns-server 127.10.4.1:1053 --resolve-every 2s --count 100 --interval 50ms",
            "client-http --url http://127.10.2.1:80/pod --count 60 --interval 50ms",
            "client-grpc --host 127.10.2.1:30051 --delay 100ms --count 30 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --delay 100ms --count 30 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --delay 100ms --count 30 --interval 0",
            "client-grpc --host 127.10.2.1:30051 --count 60 --interval 50ms",
            "client-http --url http://127.10.3.1:80/ --count 30 --interval 0",
            "client-grpc --host 127.10.3.1:30051 --delay 100ms --timeout 1s --count 40 --interval 0",
            "client-grpc --host 127.10.2.1:30051 --delay 100ms --timeout 1s --keepalive-time 200ms --keepalive-timeout 200ms --count 40 --interval 0",
        ];
        assert_eq!(SCENARIOS.len(), expected.len());
        for (s, command) in SCENARIOS.iter().zip(expected) {
            let plan = Plan::new(s, &options(), &istio_dir, &plugin).unwrap();
            assert_eq!(plan.shown_command(), command, "{}", s.name);
        }
    }

    #[test]
    fn plans_start_what_the_client_path_needs() {
        let istio_dir = manifests::istio_dir(None);
        let plugin = preflight(&istio_dir).unwrap();
        for s in SCENARIOS {
            let plan = Plan::new(s, &options(), &istio_dir, &plugin).unwrap();
            let layout = &plan.layout;
            let what = (layout.l4_service, layout.sidecars.is_some(), layout.dns);
            let want = match s.path {
                ClientPath::L4Service => (true, false, false),
                ClientPath::Sidecar => (false, true, false),
                ClientPath::PodAddresses => (false, false, false),
                ClientPath::HeadlessDns => (false, false, true),
            };
            assert_eq!(what, want, "{}", s.name);
            // The checks read the DestinationRule's policy only where one applies.
            assert_eq!(
                plan.policy.is_some(),
                s.destination_rule.is_some(),
                "{}",
                s.name
            );
        }
    }
}
