//! The whole benchmark: find the tools, pin the cores, run the three phases
//! (`phase::{proxy, servers, churn}`: start everything, check each
//! configuration does its work, alternate the configurations under load,
//! measure, stop everything), then judge the goals.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};

use crate::{
    configs::Inputs,
    goals::goals,
    grpc, machine,
    phase::{self, Bench},
    procfs,
    report::{Report, Settings},
    tools::Tools,
};

/// What a run measures and for how long (`main` builds it from the flags).
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

/// Where the report and the run's logs go unless `--out` says otherwise.
pub fn default_out_dir() -> PathBuf {
    harness::paths::target_dir().join("bench")
}

/// One line of progress on stderr (stdout carries the report).
pub(crate) fn progress(message: &str) {
    eprintln!("bench: {message}");
}

/// Run the three phases against `opts` and judge the goals.
pub fn run_phases(opts: &Options) -> anyhow::Result<Report> {
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    let tools = Tools::locate(opts)?;
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
    let cores = machine::pin_cores()?;
    let mut machine = machine::describe(&tools, &cores);
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
    let body = phase::write_body(&dir, "getinfo.bin", &grpc::get_info_body())?;

    let (started, machine_before, own_before) = (
        Instant::now(),
        procfs::machine_cpu()?,
        procfs::own_cpu_micros(),
    );
    // Each phase stops (and reaps) its processes, so their CPU time is ours
    // by the end: what else the machine did meanwhile is the rest.
    let proxy = phase::proxy::measure(&bench, &inputs, &body, &pod)?;
    let servers = phase::servers::measure(&bench, &pod)?;
    let churn = phase::churn::measure(&bench, &inputs, &pod)?;
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
