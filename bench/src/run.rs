//! The whole benchmark: start everything, check each configuration does its
//! work, alternate the configurations under load, measure, stop everything.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use harness::http::h2c;
use harness::process::ChildGuard;
use harness::process::pinned;
use upstream_tagger::{
    headers::{UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD},
    metrics,
};

use crate::{
    configs::{self, Inputs, Variant},
    envoy::{self, Envoy},
    grpc, h2load, procfs,
    report::{
        self, ChurnRow, Goal, Machine, ProxyRow, Report, ServerRow, Settings, Verdict, median,
        median_difference, median_ratio, verdict,
    },
};

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub latency_duration: Duration,
    pub clients: u32,
    pub streams: u32,
    pub churn_connections: u64,
    pub churn_parallel: u64,
    pub out_dir: PathBuf,
    pub envoy: Option<PathBuf>,
    pub wasm: Option<PathBuf>,
    pub empty_wasm: Option<PathBuf>,
    pub istio_dir: Option<PathBuf>,
}

/// Churn size the RSS goal is stated for.
pub const CHURN_GOAL_CONNECTIONS: u64 = 100_000;

/// Where `make bench-deps` leaves the empty filter (a relative
/// `CARGO_TARGET_DIR` is taken from the workspace root, as cargo does).
pub fn default_empty_wasm() -> PathBuf {
    harness::paths::target_dir().join("wasm32-wasip1/wasm/empty_filter.wasm")
}

pub fn default_out_dir() -> PathBuf {
    harness::paths::target_dir().join("bench")
}

/// `N` distinct ports free right now on 127.0.0.1 (for servers that need
/// theirs given): every listener is held until all are chosen, so two
/// answers cannot be the same port.
fn free_addrs<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr()?;
    }
    Ok(addrs)
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

/// Everything a run needs, found up front: one clear error per missing piece.
struct Tools {
    envoy: PathBuf,
    tagger_wasm: PathBuf,
    empty_wasm: PathBuf,
    h2load: PathBuf,
    server: PathBuf,
    hello: PathBuf,
}

fn locate(opts: &Options) -> anyhow::Result<Tools> {
    let envoy = harness::paths::envoy_at(opts.envoy.clone())?;
    let tagger_wasm = harness::paths::wasm_at(opts.wasm.clone())?;
    let bin_dir = harness::paths::bin_dir(&["server"])?;
    let empty_wasm = opts.empty_wasm.clone().unwrap_or_else(default_empty_wasm);
    ensure!(
        empty_wasm.exists(),
        "the empty-filter module {} is missing: run `make bench-deps`",
        empty_wasm.display()
    );
    let h2load = h2load::locate()?;
    let hello = bin_dir.join("hello-server");
    ensure!(
        hello.exists(),
        "{} is missing: run `cargo build -p bench` with the same profile as bench (make bench does)",
        hello.display()
    );
    Ok(Tools {
        server: bin_dir.join("server"),
        envoy,
        tagger_wasm,
        empty_wasm,
        h2load,
        hello,
    })
}

/// Pins: servers on the first allowed CPU, load on the second.
struct Cores {
    /// CPUs this process could use before pinning itself.
    online: usize,
    server: Option<usize>,
    load: Option<usize>,
}

fn cores() -> anyhow::Result<Cores> {
    let allowed = procfs::allowed_cpus();
    if allowed.len() < 2 {
        progress("fewer than 2 CPUs available: nothing is pinned, numbers will be noisier");
        return Ok(Cores {
            online: allowed.len(),
            server: None,
            load: None,
        });
    }
    // This process drives the churn and polls stats: it belongs with the load.
    procfs::pin_self(allowed[1])?;
    Ok(Cores {
        online: allowed.len(),
        server: Some(allowed[0]),
        load: Some(allowed[1]),
    })
}

/// What `program arg` prints (a version line), or "" if it fails or takes
/// longer than a few seconds: the report's header must not hang the run.
fn command_line(program: &Path, arg: &str) -> String {
    use std::io::Read as _;
    let Ok(mut child) = Command::new(program)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return String::new();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out.trim().to_owned()
}

fn machine(tools: &Tools, cores: &Cores) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let envoy_version = command_line(&tools.envoy, "--version");
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" → "Envoy 1.40.0".
    let envoy_version = envoy_version
        .split_once("version: ")
        .and_then(|(_, v)| v.split('/').nth(1))
        .map(|v| format!("Envoy {v}"))
        .unwrap_or(envoy_version);
    Machine {
        cpu_model,
        cpus: cores.online,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        envoy_version,
        h2load_version: command_line(&tools.h2load, "--version"),
        server_cpu: cores.server,
        load_cpu: cores.load,
        load_average_start: procfs::load_average(),
        load_average_end: None,
        run_secs: 0.0,
        other_cpu_secs: 0.0,
        own_cpu_secs: 0.0,
        steal_secs: 0.0,
    }
}

/// Per round: throughput and CPU cost under load.
struct Loaded {
    req_per_sec: f64,
    cpu_us_per_request: f64,
}

struct Bench<'a> {
    opts: &'a Options,
    tools: &'a Tools,
    cores: &'a Cores,
    dir: PathBuf,
}

impl Bench<'_> {
    #[allow(clippy::too_many_arguments)]
    fn load<'b>(
        &'b self,
        url: &str,
        body: &'b Path,
        clients: u32,
        streams: u32,
        duration: Duration,
        request_log: Option<&'b Path>,
        output: &'b Path,
    ) -> h2load::Load<'b> {
        h2load::Load {
            h2load: &self.tools.h2load,
            cpu: self.cores.load,
            url: url.to_owned(),
            body,
            clients,
            streams,
            amount: h2load::Amount::For(duration),
            request_log,
            output,
        }
    }

    /// Warm up, then measure req/s and the server's CPU per request.
    fn loaded(&self, pid: u32, url: &str, body: &Path, name: &str) -> anyhow::Result<Loaded> {
        let (clients, streams) = (self.opts.clients, self.opts.streams);
        let warm_output = self.dir.join(format!("{name}.warmup.h2load.txt"));
        self.load(
            url,
            body,
            clients,
            streams,
            self.opts.warmup,
            None,
            &warm_output,
        )
        .warm_up()?;
        let output = self.dir.join(format!("{name}.h2load.txt"));
        let load = self.load(
            url,
            body,
            clients,
            streams,
            self.opts.duration,
            None,
            &output,
        );
        let before = procfs::cpu_micros(pid)?;
        let summary = load.run()?;
        let after = procfs::cpu_micros(pid)?;
        Ok(Loaded {
            req_per_sec: summary.req_per_sec,
            cpu_us_per_request: after.saturating_sub(before) as f64 / summary.succeeded as f64,
        })
    }

    /// One connection, one request in flight: every request's time in µs.
    fn unloaded(&self, url: &str, body: &Path, name: &str) -> anyhow::Result<Vec<u64>> {
        let log = self.dir.join(format!("{name}.requests.tsv"));
        let _ = std::fs::remove_file(&log);
        let output = self.dir.join(format!("{name}.latency.h2load.txt"));
        self.load(
            url,
            body,
            1,
            1,
            self.opts.latency_duration,
            Some(&log),
            &output,
        )
        .run()?;
        let text = std::fs::read_to_string(&log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        h2load::parse_request_log(&text).with_context(|| log.display().to_string())
    }
}

/// Check that a configuration does what it claims before measuring it: a
/// fast filter that tags nothing would be a lie.
/// Envoy's gauge of live V8 VMs.
const V8_ACTIVE_STAT: &str = "wasm.envoy.wasm.runtime.v8.active";

fn verify(variant: Variant, envoy: &Envoy, pod: &str, body: &[u8]) -> anyhow::Result<()> {
    let (answers, other) = h2c::probe(envoy.listener, grpc::GET_INFO_PATH, body, 2)?;
    let context = || format!("{} ({}): ", variant.label(), envoy.config_path.display());
    for a in answers.iter().chain([&other]) {
        ensure!(a.status == 200, "{}HTTP {}", context(), a.status);
    }
    let (first, second) = (&answers[0], &answers[1]);
    let tags = |a: &h2c::Answer| {
        (
            a.header(UPSTREAM_POD).map(str::to_owned),
            a.header(UPSTREAM_CONNECTION_ID).map(str::to_owned),
            a.header(UPSTREAM_CONNECTION_REQUESTS).map(str::to_owned),
        )
    };
    let (t1, t2, t3) = (tags(first), tags(second), tags(&other));
    if matches!(
        variant.filters(),
        Variant::EmptyWasm | Variant::UpstreamTagger
    ) {
        // A module that failed to load, open-failing, would look like no
        // filter at all: the floor must be a V8 VM that really runs.
        let active = envoy.stat(V8_ACTIVE_STAT)?;
        ensure!(
            active.is_some_and(|n| n >= 1),
            "{}no V8 wasm VM is running ({V8_ACTIVE_STAT} = {active:?})",
            context()
        );
    }
    match variant.filters() {
        Variant::NoFilter | Variant::EmptyWasm => {
            for t in [&t1, &t2, &t3] {
                ensure!(
                    *t == (None, None, None),
                    "{}unexpected tags {t:?}",
                    context()
                );
            }
        }
        // Every tagging configuration: the pod on each answer, one connection
        // id for the first connection's two calls and another for the second.
        Variant::HeaderMutation | Variant::UpstreamTagger | Variant::Lua => {
            for t in [&t1, &t2, &t3] {
                ensure!(
                    t.0.as_deref() == Some(pod),
                    "{}pod header {:?}",
                    context(),
                    t.0
                );
            }
            ensure!(
                t1.1.is_some() && t1.1 == t2.1 && t1.1 != t3.1,
                "{}connection ids {:?} {:?} {:?}",
                context(),
                t1.1,
                t2.1,
                t3.1
            );
            if variant.filters() == Variant::HeaderMutation {
                // Envoy has no per-connection request count to offer.
                return Ok(());
            }
            let counts = [t1.2.as_deref(), t2.2.as_deref(), t3.2.as_deref()];
            ensure!(
                counts == [Some("1"), Some("2"), Some("1")],
                "{}request counts {counts:?}",
                context()
            );
        }
        Variant::SidecarNoFilter | Variant::SidecarTagger => {
            unreachable!("filters() maps sidecars")
        }
    }
    if variant.is_sidecar() {
        // The real echo server answered, through the sidecar.
        ensure!(
            first.grpc_status.as_deref() == Some("0"),
            "{}grpc-status {:?} (is the echo server answering?)",
            context(),
            first.grpc_status
        );
    }
    Ok(())
}

/// The echo server the sidecar configurations route to, pinned to the
/// servers' CPU: in a pod, the app and its sidecar share the pod's CPU.
fn start_echo_server(
    bench: &Bench,
    pod: &str,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    echo_server(
        &bench.tools.server,
        bench.cores.server,
        &bench.dir,
        pod,
        name,
    )
}

/// The release echo server (`server`), answering `getInfo` as `pod`, its
/// log in `dir/<name>.log`; returns once it has answered one call.
pub fn echo_server(
    server: &Path,
    cpu: Option<usize>,
    dir: &Path,
    pod: &str,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let [grpc_addr, http_addr] = free_addrs()?;
    let mut command = pinned(server, cpu);
    command
        .arg("--grpc-addr")
        .arg(grpc_addr.to_string())
        .arg("--http-addr")
        .arg(http_addr.to_string())
        .arg("--pod-name")
        .arg(pod)
        // Start-up lines only: logging is not what is compared.
        .env("RUST_LOG", "warn");
    let mut echo = ChildGuard::spawn_logged(name, &mut command, &dir.join(format!("{name}.log")))?;
    echo.wait_listening(grpc_addr, Duration::from_secs(20))?;
    verify_server(name, grpc_addr, grpc::GET_INFO_PATH, &grpc::get_info_body())?;
    Ok((echo, grpc_addr))
}

fn verify_server(name: &str, addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<()> {
    let (answers, _) = h2c::probe(addr, path, body, 1)?;
    let a = &answers[0];
    ensure!(
        a.status == 200 && a.grpc_status.as_deref() == Some("0"),
        "{name} at {addr}{path}: HTTP {} grpc-status {:?}",
        a.status,
        a.grpc_status
    );
    Ok(())
}

fn write_body(dir: &Path, name: &str, body: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn start_envoys(
    bench: &Bench,
    inputs: &Inputs,
    variants: &[Variant],
    prefix: &str,
    pod: &str,
) -> anyhow::Result<Vec<Envoy>> {
    // Launch all, then wait: their wasm modules compile in parallel.
    let starting = variants
        .iter()
        .map(|v| {
            envoy::spawn(
                &bench.tools.envoy,
                bench.cores.server,
                &bench.dir,
                &format!("{prefix}{}", v.key()),
                &configs::bootstrap(*v, inputs),
                pod,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    starting
        .into_iter()
        .map(|s| s.wait_ready(Duration::from_secs(60)))
        .collect()
}

fn envoy_errors(envoys: &[Envoy]) -> anyhow::Result<()> {
    let errors: Vec<String> = envoys.iter().flat_map(Envoy::error_lines).collect();
    if !errors.is_empty() {
        bail!(
            "Envoy logged errors (results would not be trustworthy):\n{}",
            errors.join("\n")
        );
    }
    Ok(())
}

fn proxy_phase(
    bench: &Bench,
    inputs: &Inputs,
    body: &Path,
    pod: &str,
) -> anyhow::Result<Vec<ProxyRow>> {
    let opts = bench.opts;
    let (_echo, echo_addr) = start_echo_server(bench, pod, "sidecar-app")?;
    let inputs = &Inputs {
        echo: Some(echo_addr),
        ..*inputs
    };
    progress(&format!(
        "starting {} Envoys (one per configuration)",
        Variant::ALL.len()
    ));
    let envoys = start_envoys(bench, inputs, &Variant::ALL, "", pod)?;
    let body_bytes = std::fs::read(body)?;
    for (variant, envoy) in Variant::ALL.iter().zip(&envoys) {
        verify(*variant, envoy, pod, &body_bytes)?;
    }
    progress("every configuration answers and tags as it should");

    let n = Variant::ALL.len();
    let mut loaded: Vec<Vec<Loaded>> = (0..n).map(|_| Vec::new()).collect();
    let mut latency: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
    // Every round's request times, pooled per configuration: a p99 from one
    // 2 s run is a handful of requests; from all rounds it is steady.
    let mut pooled: Vec<Vec<u64>> = vec![Vec::new(); n];
    for round in 0..opts.rounds {
        // Rotate the order each round so no configuration always runs first.
        for k in 0..n {
            let i = (k + round) % n;
            let (variant, envoy) = (Variant::ALL[i], &envoys[i]);
            let url = format!("http://{}{}", envoy.listener, grpc::GET_INFO_PATH);
            let name = format!("r{}-{}", round + 1, variant.key());
            let l = bench.loaded(envoy.pid(), &url, body, &name)?;
            let times = bench.unloaded(&url, body, &name)?;
            let (p50, p99) = (
                h2load::percentile(&times, 50.0),
                h2load::percentile(&times, 99.0),
            );
            pooled[i].extend(times);
            progress(&format!(
                "round {}/{}: {:<34} {:>9.0} req/s  {:>5.1} µs CPU/req  p50 {p50} µs  p99 {p99} µs",
                round + 1,
                opts.rounds,
                variant.label(),
                l.req_per_sec,
                l.cpu_us_per_request
            ));
            loaded[i].push(l);
            latency[i].push((p50, p99));
        }
    }
    envoy_errors(&envoys)?;

    let rps = |i: usize| loaded[i].iter().map(|l| l.req_per_sec).collect::<Vec<_>>();
    let cpus = |i: usize| {
        loaded[i]
            .iter()
            .map(|l| l.cpu_us_per_request)
            .collect::<Vec<_>>()
    };
    // (p50, p99) of each configuration's pooled requests, computed once.
    let pooled_p: Vec<(f64, f64)> = pooled
        .iter()
        .map(|times| {
            (
                h2load::percentile(times, 50.0) as f64,
                h2load::percentile(times, 99.0) as f64,
            )
        })
        .collect();
    let mut rows = Vec::new();
    for (i, (variant, envoy)) in Variant::ALL.iter().zip(&envoys).enumerate() {
        let module = match variant.filters() {
            Variant::EmptyWasm => Some(std::fs::metadata(&bench.tools.empty_wasm)?.len()),
            Variant::UpstreamTagger => Some(std::fs::metadata(&bench.tools.tagger_wasm)?.len()),
            _ => None,
        };
        // Each row against its own baseline, measured in the same rounds.
        let base = Variant::ALL
            .iter()
            .position(|v| *v == variant.baseline())
            .expect("every baseline is a configuration");
        rows.push(ProxyRow {
            key: variant.key().into(),
            label: variant.label().into(),
            req_per_sec: rps(i),
            req_per_sec_median: median(&rps(i)),
            baseline: variant.baseline().key().into(),
            ratio_vs_no_filter: median_ratio(&rps(i), &rps(base)),
            cpu_us_per_request: cpus(i),
            cpu_us_per_request_median: median(&cpus(i)),
            added_cpu_us: median_difference(&cpus(i), &cpus(base)),
            p50_us: latency[i].iter().map(|l| l.0).collect(),
            p99_us: latency[i].iter().map(|l| l.1).collect(),
            p50_us_pooled: pooled_p[i].0,
            p99_us_pooled: pooled_p[i].1,
            added_p50_us: pooled_p[i].0 - pooled_p[base].0,
            added_p99_us: pooled_p[i].1 - pooled_p[base].1,
            rss_bytes: envoy.rss_bytes()?,
            module_bytes: module,
        });
    }
    Ok(rows)
}

fn servers_phase(bench: &Bench, pod: &str) -> anyhow::Result<Vec<ServerRow>> {
    let opts = bench.opts;
    let [hello_addr, echo_addr, echo_http] = free_addrs()?;
    let mut command = pinned(&bench.tools.hello, bench.cores.server);
    command.arg("--addr").arg(hello_addr.to_string());
    let mut hello = ChildGuard::spawn_logged(
        "hello-server",
        &mut command,
        &bench.dir.join("hello-server.log"),
    )?;

    let mut command = pinned(&bench.tools.server, bench.cores.server);
    command
        .arg("--grpc-addr")
        .arg(echo_addr.to_string())
        .arg("--http-addr")
        .arg(echo_http.to_string())
        .arg("--pod-name")
        .arg(pod)
        // Start-up lines only: logging is not what is compared.
        .env("RUST_LOG", "warn");
    let mut echo = ChildGuard::spawn_logged(
        "echo server",
        &mut command,
        &bench.dir.join("echo-server.log"),
    )?;
    hello.wait_listening(hello_addr, Duration::from_secs(20))?;
    echo.wait_listening(echo_addr, Duration::from_secs(20))?;

    let hello_body = grpc::say_hello_body();
    let echo_body = grpc::get_info_body();
    verify_server(
        "tonic hello-world",
        hello_addr,
        grpc::SAY_HELLO_PATH,
        &hello_body,
    )?;
    verify_server("echo server", echo_addr, grpc::GET_INFO_PATH, &echo_body)?;
    let hello_file = write_body(&bench.dir, "sayhello.bin", &hello_body)?;
    let echo_file = write_body(&bench.dir, "getinfo.bin", &echo_body)?;

    struct Target<'a> {
        key: &'static str,
        label: &'static str,
        pid: u32,
        url: String,
        body: &'a Path,
    }
    let targets = [
        Target {
            key: "tonic-hello-world",
            label: "tonic hello-world (SayHello)",
            pid: hello.pid(),
            url: format!("http://{hello_addr}{}", grpc::SAY_HELLO_PATH),
            body: &hello_file,
        },
        Target {
            key: "echo-server",
            label: "echo server (getInfo)",
            pid: echo.pid(),
            url: format!("http://{echo_addr}{}", grpc::GET_INFO_PATH),
            body: &echo_file,
        },
    ];
    let mut loaded: [Vec<Loaded>; 2] = [Vec::new(), Vec::new()];
    for round in 0..opts.rounds {
        for k in 0..2 {
            let i = (k + round) % 2;
            let t = &targets[i];
            let l = bench.loaded(t.pid, &t.url, t.body, &format!("r{}-{}", round + 1, t.key))?;
            progress(&format!(
                "round {}/{}: {:<34} {:>9.0} req/s  {:>5.1} µs CPU/req",
                round + 1,
                opts.rounds,
                t.label,
                l.req_per_sec,
                l.cpu_us_per_request
            ));
            loaded[i].push(l);
        }
    }
    let rps = |i: usize| loaded[i].iter().map(|l| l.req_per_sec).collect::<Vec<_>>();
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        rows.push(ServerRow {
            key: t.key.into(),
            label: t.label.into(),
            req_per_sec: rps(i),
            req_per_sec_median: median(&rps(i)),
            ratio_vs_hello: median_ratio(&rps(i), &rps(0)),
            cpu_us_per_request_median: median(
                &loaded[i]
                    .iter()
                    .map(|l| l.cpu_us_per_request)
                    .collect::<Vec<_>>(),
            ),
            rss_bytes: procfs::rss_bytes(t.pid)?,
        });
    }
    Ok(rows)
}

fn wasm_stat(name: &str) -> String {
    format!("wasmcustom.{name}")
}

/// Wait until Envoy has no open downstream connection and, with the filter,
/// its tick has flushed the counters for everything that was tagged.
fn settle(envoy: &Envoy, tagged_total: Option<u64>) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let active = envoy.stat("http.bench.downstream_cx_active")?.unwrap_or(0);
        let flushed = match tagged_total {
            Some(total) => {
                envoy
                    .stat(&wasm_stat(metrics::REQUESTS_TAGGED))?
                    .unwrap_or(0) as u64
                    >= total
            }
            None => true,
        };
        if active == 0 && flushed {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!(
                "{}: {active} connections still open or stats not flushed after {deadline:?}",
                envoy.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn churn_phase(bench: &Bench, inputs: &Inputs, pod: &str) -> anyhow::Result<Vec<ChurnRow>> {
    let opts = bench.opts;
    let variants = [Variant::NoFilter, Variant::UpstreamTagger];
    progress(&format!(
        "churn: {} connections, one request each, without and with the filter",
        opts.churn_connections
    ));
    let envoys = start_envoys(bench, inputs, &variants, "churn-", pod)?;
    let body = grpc::get_info_body();
    // Let allocator pools and the wasm heap reach their working size first,
    // so growth is what the churn itself leaves behind.
    let warm = (opts.churn_connections / 20).clamp(1, 2_000);
    let mut rows = Vec::new();
    for (variant, envoy) in variants.iter().zip(&envoys) {
        let filtered = *variant == Variant::UpstreamTagger;
        let warmed = h2c::churn(
            envoy.listener,
            grpc::GET_INFO_PATH,
            &body,
            warm,
            opts.churn_parallel,
            UPSTREAM_POD,
        )?;
        settle(envoy, filtered.then_some(warmed.tagged))?;
        let rss_before = envoy.rss_bytes()?;
        let tracked_max = AtomicI64::new(i64::MIN);
        let stop = AtomicBool::new(false);
        let gauge = wasm_stat(metrics::CONNECTIONS_TRACKED);
        let outcome = std::thread::scope(|scope| {
            // The gauge is flushed on the filter's 1 s tick: sample it more
            // often than that for the whole run. The unfiltered Envoy is
            // polled the same way (its answer is simply absent), so admin
            // traffic weighs the same on both RSS figures.
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(v)) = envoy.stat(&gauge) {
                        tracked_max.fetch_max(v, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let outcome = h2c::churn(
                envoy.listener,
                grpc::GET_INFO_PATH,
                &body,
                opts.churn_connections,
                opts.churn_parallel,
                UPSTREAM_POD,
            );
            stop.store(true, Ordering::Relaxed);
            outcome
        })?;
        settle(envoy, filtered.then_some(warmed.tagged + outcome.tagged))?;
        let rss_after = envoy.rss_bytes()?;
        let (tracked_max, evicted) = if filtered {
            let last = envoy
                .stat(&gauge)?
                .context("the filter's tracked-connections gauge is missing from /stats")?;
            (
                Some(tracked_max.load(Ordering::Relaxed).max(last)),
                envoy.stat(&wasm_stat(metrics::CONNECTIONS_EVICTED))?,
            )
        } else {
            (None, None)
        };
        let expected_tagged = if filtered { outcome.connections } else { 0 };
        ensure!(
            outcome.tagged == expected_tagged,
            "{}: {} of {} churn answers tagged, expected {expected_tagged}",
            variant.label(),
            outcome.tagged,
            outcome.connections
        );
        progress(&format!(
            "churn {:<34} RSS {:.1} → {:.1} MiB, tracked max {}",
            variant.label(),
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            tracked_max.map_or("—".into(), |v| v.to_string())
        ));
        rows.push(ChurnRow {
            key: variant.key().into(),
            label: variant.label().into(),
            connections: outcome.connections,
            tagged: outcome.tagged,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            rss_growth_bytes: rss_after as i64 - rss_before as i64,
            tracked_max,
            cap: filtered.then_some(inputs.cap),
            evicted,
        });
    }
    envoy_errors(&envoys)?;
    Ok(rows)
}

/// Issue 6's goals against this run. Size limits are read strictly
/// (1 KB = 1000 B, 1 MB = 1,000,000 B).
pub fn goals(report: &Report) -> Vec<Goal> {
    let judged = report.settings.judged();
    let timed = |ok: bool| {
        if judged {
            verdict(ok)
        } else {
            Verdict::NotJudged
        }
    };
    let mut goals = Vec::new();
    // Every "added" and ratio column is already relative to no filter.
    let (Some(tagger), Some(lua)) = (
        report.proxy_row(Variant::UpstreamTagger.key()),
        report.proxy_row(Variant::Lua.key()),
    ) else {
        return goals;
    };
    let ratio = tagger.ratio_vs_no_filter;
    goals.push(Goal {
        goal: "upstream-tagger throughput vs no filter".into(),
        target: match report.proxy_row(Variant::EmptyWasm.key()) {
            Some(empty) => format!(
                "≥ 0.75× (stretch 0.80×; the empty-filter floor here: {:.2}×)",
                empty.ratio_vs_no_filter
            ),
            None => "≥ 0.75× (stretch 0.80×)".into(),
        },
        measured: format!(
            "{ratio:.2}× (stretch {})",
            if ratio >= 0.80 { "met" } else { "not met" }
        ),
        verdict: timed(ratio >= 0.75),
    });
    goals.push(Goal {
        goal: "upstream-tagger added Envoy CPU per request".into(),
        target: "≤ +4 µs".into(),
        measured: format!("{:+.1} µs", tagger.added_cpu_us),
        verdict: timed(tagger.added_cpu_us <= 4.0),
    });
    let vs_lua = median_ratio(&tagger.req_per_sec, &lua.req_per_sec);
    goals.push(Goal {
        goal: "upstream-tagger vs the Lua equivalent".into(),
        target: "≥ 1.3× req/s".into(),
        measured: format!("{vs_lua:.2}×"),
        verdict: timed(vs_lua >= 1.3),
    });
    goals.push(Goal {
        goal: "unloaded latency added (1 connection, 1 in flight)".into(),
        target: "p50 ≤ +15 µs, p99 ≤ +25 µs".into(),
        measured: format!(
            "p50 {:+.0} µs, p99 {:+.0} µs",
            tagger.added_p50_us, tagger.added_p99_us
        ),
        verdict: timed(tagger.added_p50_us <= 15.0 && tagger.added_p99_us <= 25.0),
    });
    if let [without, with] = &report.churn[..] {
        let diff = with.rss_growth_bytes - without.rss_growth_bytes;
        let full = with.connections >= CHURN_GOAL_CONNECTIONS;
        goals.push(Goal {
            goal: format!(
                "Envoy RSS growth after {} short connections, filter vs none",
                report::thousands(with.connections as f64)
            ),
            target: "≤ 1 MB after 100,000".into(),
            measured: format!(
                "{:+.2} MB ({:+.2} with, {:+.2} without)",
                diff as f64 / 1e6,
                with.rss_growth_bytes as f64 / 1e6,
                without.rss_growth_bytes as f64 / 1e6
            ),
            verdict: if full {
                verdict(diff <= 1_000_000)
            } else {
                Verdict::NotJudged
            },
        });
        if let (Some(max), Some(cap)) = (with.tracked_max, with.cap) {
            goals.push(Goal {
                goal: "tracked connections never above the cap".into(),
                target: format!("≤ {}", report::thousands(cap as f64)),
                measured: format!(
                    "max {} seen, {} evicted",
                    report::thousands(max as f64),
                    report::thousands(with.evicted.unwrap_or(0) as f64)
                ),
                verdict: verdict(max <= i64::from(cap)),
            });
        }
    }
    if let Some(size) = tagger.module_bytes {
        // Issue 13 traded issue 6's 128 KB for serde/serde_json: the module is
        // fetched once per sidecar, a hand-written parser is reviewed by nobody.
        goals.push(Goal {
            goal: "module size".into(),
            target: "≤ 256 KB (serde; was 128 KB with a hand-written reader)".into(),
            measured: format!("{} B", report::thousands(size as f64)),
            verdict: verdict(size <= 256_000),
        });
    }
    if let Some(echo) = report.servers.iter().find(|s| s.key == "echo-server") {
        goals.push(Goal {
            goal: "echo server getInfo vs tonic hello-world".into(),
            target: "≥ 0.9× req/s".into(),
            measured: format!("{:.2}×", echo.ratio_vs_hello),
            verdict: timed(echo.ratio_vs_hello >= 0.9),
        });
    }
    goals
}

pub fn run(opts: &Options) -> anyhow::Result<Report> {
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    let tools = locate(opts)?;
    let istio_dir = sidecar::manifests::istio_dir(opts.istio_dir.as_deref());
    let plugin = sidecar::manifests::wasm_plugin(&istio_dir)?;
    let (inbound_pool, _) = sidecar::manifests::inbound_policy(&istio_dir)?;
    let config = upstream_tagger::Config::parse(plugin.plugin_config.as_bytes())
        .map_err(|e| anyhow!("{}/wasmplugin.yaml pluginConfig: {e}", istio_dir.display()))?;
    let pod = sidecar::pods::pod_names("server", 1, 6).remove(0);
    let dir = opts
        .out_dir
        .join(if opts.quick { "quick-run" } else { "run" });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cores = cores()?;
    let mut machine = machine(&tools, &cores);
    let bench = Bench {
        opts,
        tools: &tools,
        cores: &cores,
        dir: dir.clone(),
    };
    progress(&format!(
        "logs, configs and raw h2load output: {}",
        dir.display()
    ));
    let inputs = Inputs {
        pod: &pod,
        plugin: &plugin,
        inbound_pool: &inbound_pool,
        tagger_wasm: &tools.tagger_wasm,
        empty_wasm: &tools.empty_wasm,
        cap: config.max_tracked_connections,
        echo: None,
    };
    let body = write_body(&dir, "getinfo.bin", &grpc::get_info_body())?;

    let (started, machine_before, own_before) = (
        Instant::now(),
        procfs::machine_cpu()?,
        procfs::own_cpu_micros(),
    );
    // Each phase stops (and reaps) its processes, so their CPU time is ours
    // by the end: what else the machine did meanwhile is the rest.
    let proxy = proxy_phase(&bench, &inputs, &body, &pod)?;
    let servers = servers_phase(&bench, &pod)?;
    let churn = churn_phase(&bench, &inputs, &pod)?;
    let (machine_after, own_after) = (procfs::machine_cpu()?, procfs::own_cpu_micros());
    machine.load_average_end = procfs::load_average();
    machine.run_secs = started.elapsed().as_secs_f64();
    let busy = machine_after
        .busy_micros
        .saturating_sub(machine_before.busy_micros);
    // Signed: a negative rest means the accounting does not add up (e.g. a
    // kernel that charges interrupt time apart), and the report says so
    // instead of printing a reassuring zero.
    let own = own_after.saturating_sub(own_before);
    machine.other_cpu_secs = (busy as f64 - own as f64) / 1e6;
    machine.own_cpu_secs = own as f64 / 1e6;
    machine.steal_secs = machine_after
        .steal_micros
        .saturating_sub(machine_before.steal_micros) as f64
        / 1e6;
    let mut report = Report {
        machine,
        settings: Settings {
            quick: opts.quick,
            rounds: opts.rounds,
            warmup_ms: opts.warmup.as_millis() as u64,
            duration_ms: opts.duration.as_millis() as u64,
            latency_duration_ms: opts.latency_duration.as_millis() as u64,
            clients: opts.clients,
            streams: opts.streams,
            churn_connections: opts.churn_connections,
            churn_parallel: opts.churn_parallel,
        },
        proxy,
        servers,
        churn,
        goals: Vec::new(),
    };
    report.goals = goals(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        key: &str,
        rps: f64,
        ratio: f64,
        added_cpu: f64,
        added_p50: f64,
        added_p99: f64,
        module: Option<u64>,
    ) -> ProxyRow {
        ProxyRow {
            key: key.into(),
            label: key.into(),
            baseline: "no-filter".into(),
            req_per_sec: vec![rps],
            req_per_sec_median: rps,
            ratio_vs_no_filter: ratio,
            cpu_us_per_request: vec![10.0 + added_cpu],
            cpu_us_per_request_median: 10.0 + added_cpu,
            added_cpu_us: added_cpu,
            p50_us: vec![100],
            p99_us: vec![200],
            p50_us_pooled: 100.0 + added_p50,
            p99_us_pooled: 200.0 + added_p99,
            added_p50_us: added_p50,
            added_p99_us: added_p99,
            rss_bytes: 1,
            module_bytes: module,
        }
    }

    fn churn(key: &str, connections: u64, growth: i64, tracked: Option<i64>) -> ChurnRow {
        ChurnRow {
            key: key.into(),
            label: key.into(),
            connections,
            tagged: 0,
            rss_before_bytes: 0,
            rss_after_bytes: 0,
            rss_growth_bytes: growth,
            tracked_max: tracked,
            cap: tracked.map(|_| 10_000),
            evicted: tracked.map(|_| 0),
        }
    }

    fn report(quick: bool, tagger_rps: f64, module: u64, churn_connections: u64) -> Report {
        Report {
            machine: Machine {
                cpu_model: "cpu".into(),
                cpus: 2,
                kernel: "k".into(),
                envoy_version: "Envoy".into(),
                h2load_version: "h2load".into(),
                server_cpu: Some(0),
                load_cpu: Some(1),
                load_average_start: None,
                load_average_end: None,
                run_secs: 1.0,
                other_cpu_secs: 0.0,
                own_cpu_secs: 100.0,
                steal_secs: 0.0,
            },
            settings: Settings {
                quick,
                rounds: 5,
                warmup_ms: 1,
                duration_ms: 1,
                latency_duration_ms: 1,
                clients: 8,
                streams: 10,
                churn_connections,
                churn_parallel: 16,
            },
            proxy: vec![
                row("no-filter", 100.0, 1.0, 0.0, 0.0, 0.0, None),
                row(
                    "upstream-tagger",
                    tagger_rps,
                    tagger_rps / 100.0,
                    3.0,
                    10.0,
                    30.0,
                    Some(module),
                ),
                row("lua", 50.0, 0.5, 12.0, 30.0, 40.0, None),
            ],
            servers: vec![ServerRow {
                key: "echo-server".into(),
                label: "echo".into(),
                req_per_sec: vec![1.0],
                req_per_sec_median: 1.0,
                ratio_vs_hello: 0.95,
                cpu_us_per_request_median: 1.0,
                rss_bytes: 1,
            }],
            churn: vec![
                churn("no-filter", churn_connections, 100_000, None),
                churn(
                    "upstream-tagger",
                    churn_connections,
                    1_100_000,
                    Some(10_000),
                ),
            ],
            goals: Vec::new(),
        }
    }

    fn verdict_of(goals: &[Goal], name: &str) -> Verdict {
        goals
            .iter()
            .find(|g| g.goal.contains(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .verdict
    }

    #[test]
    fn goals_are_judged_against_issue_6_thresholds() {
        let goals = goals(&report(false, 80.0, 127_999, 100_000));
        assert_eq!(verdict_of(&goals, "throughput vs no filter"), Verdict::Met);
        assert_eq!(verdict_of(&goals, "added Envoy CPU"), Verdict::Met);
        assert_eq!(
            verdict_of(&goals, "vs the Lua equivalent"),
            Verdict::Met,
            "80/50 = 1.6×"
        );
        assert_eq!(
            verdict_of(&goals, "unloaded latency"),
            Verdict::NotMet,
            "p99 +30 > +25"
        );
        assert_eq!(
            verdict_of(&goals, "RSS growth"),
            Verdict::Met,
            "1.1 MB vs 0.1 MB: +1.0 MB"
        );
        assert_eq!(verdict_of(&goals, "never above the cap"), Verdict::Met);
        assert_eq!(verdict_of(&goals, "module size"), Verdict::Met);
        assert_eq!(verdict_of(&goals, "echo server"), Verdict::Met);

        let goals = super::goals(&report(false, 60.0, 256_001, 100_000));
        assert_eq!(
            verdict_of(&goals, "throughput vs no filter"),
            Verdict::NotMet
        );
        assert_eq!(
            verdict_of(&goals, "vs the Lua equivalent"),
            Verdict::NotMet,
            "60/50 = 1.2×"
        );
        assert_eq!(
            verdict_of(&goals, "module size"),
            Verdict::NotMet,
            "256 KB read as 256,000 B"
        );
    }

    #[test]
    fn other_work_that_does_not_add_up_is_not_shown_as_zero() {
        let mut r = report(false, 80.0, 100_000, 100_000);
        // own_cpu_secs = 100: ±5 s is within the accounting error.
        r.machine.other_cpu_secs = -8.0;
        assert!(
            r.markdown()
                .contains("other work on the machine meanwhile: n/a")
        );
        r.machine.other_cpu_secs = -3.0;
        assert!(
            r.markdown()
                .contains("meanwhile: none measurable (-3.0 CPU-s")
        );
        r.machine.other_cpu_secs = 9.0;
        assert!(r.markdown().contains("≈ 9.0 CPU-s (900% of one core)"));
    }

    #[test]
    fn short_runs_leave_timing_goals_unjudged() {
        let goals = goals(&report(true, 80.0, 100_000, 3_000));
        for name in [
            "throughput vs no filter",
            "added Envoy CPU",
            "vs the Lua equivalent",
            "unloaded latency",
            "echo server",
            "RSS growth",
        ] {
            assert_eq!(verdict_of(&goals, name), Verdict::NotJudged, "{name}");
        }
        assert_eq!(
            verdict_of(&goals, "never above the cap"),
            Verdict::Met,
            "a bound, not a timing"
        );
        assert_eq!(verdict_of(&goals, "module size"), Verdict::Met);

        // Not --quick, but fewer than three rounds: not judged either.
        let mut two_rounds = report(false, 80.0, 100_000, 100_000);
        two_rounds.settings.rounds = 2;
        let judged = super::goals(&two_rounds);
        assert_eq!(
            verdict_of(&judged, "throughput vs no filter"),
            Verdict::NotJudged
        );
        assert!(two_rounds.markdown().contains("too few to judge"));
    }
}
