//! The three phases of a run, each starting and stopping its own
//! processes: [`proxy`] (the Envoy configurations under load), [`servers`]
//! (the echo server against tonic's hello-world) and [`churn`] (short
//! connections through Envoy without and with the filter). Here: what they
//! share.

pub mod churn;
pub mod proxy;
pub mod servers;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use harness::process::ChildGuard;

use crate::{
    benchmark::Options,
    configs::{self, Inputs, Variant},
    echo_server,
    envoy::{self, Envoy},
    h2load,
    machine::Cores,
    procfs,
    tools::Tools,
};

/// Per round: throughput and CPU cost under load.
pub(crate) struct Loaded {
    pub req_per_sec: f64,
    pub cpu_us_per_request: f64,
}

/// What every phase runs with: the options, the tools, the pins, and the
/// directory for its logs.
pub(crate) struct Bench<'a> {
    pub opts: &'a Options,
    pub tools: &'a Tools,
    pub cores: &'a Cores,
    pub dir: PathBuf,
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
    pub(crate) fn loaded(
        &self,
        pid: u32,
        url: &str,
        body: &Path,
        name: &str,
    ) -> anyhow::Result<Loaded> {
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
        let summary = load.measure()?;
        let after = procfs::cpu_micros(pid)?;
        Ok(Loaded {
            req_per_sec: summary.req_per_sec,
            cpu_us_per_request: after.saturating_sub(before) as f64 / summary.succeeded as f64,
        })
    }

    /// One connection, one request in flight: every request's time in µs.
    pub(crate) fn unloaded(&self, url: &str, body: &Path, name: &str) -> anyhow::Result<Vec<u64>> {
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
        .measure()?;
        let text = std::fs::read_to_string(&log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        h2load::parse_request_log(&text).with_context(|| log.display().to_string())
    }
}

/// The echo server the sidecar configurations route to, pinned to the
/// servers' CPU: in a pod, the app and its sidecar share the pod's CPU.
pub(crate) fn start_echo_server(
    bench: &Bench,
    pod: &str,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    echo_server::start(
        &bench.tools.server,
        bench.cores.server,
        &bench.dir,
        pod,
        name,
    )
}

pub(crate) fn write_body(dir: &Path, name: &str, body: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub(crate) fn start_envoys(
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

/// Fail if any Envoy logged an error while it was measured.
pub(crate) fn envoy_errors(envoys: &[Envoy]) -> anyhow::Result<()> {
    let errors: Vec<String> = envoys.iter().flat_map(Envoy::error_lines).collect();
    if !errors.is_empty() {
        bail!(
            "Envoy logged errors (results would not be trustworthy):\n{}",
            errors.join("\n")
        );
    }
    Ok(())
}
