//! `callgrind`: instructions per request of each configuration, counted by
//! valgrind's callgrind (see `bench::callgrind`). Deterministic where
//! `make bench` is not, and about 50× slower: a few minutes a configuration.
//!
//! ```sh
//! cargo run --release -p bench --bin callgrind -- --module stripped=/tmp/stripped.wasm
//! ```

use std::{path::PathBuf, process::ExitCode};

use bench::callgrind::{self, Options};
use clap::Parser;

fn module(text: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected LABEL=PATH"))?;
    Ok((label.to_owned(), PathBuf::from(path)))
}

/// Instructions per request in Envoy under callgrind: no filter, the empty
/// proxy-wasm filter and upstream-tagger (plus any `--module`), on the
/// `direct_response` route and as the inbound sidecar in front of the echo
/// server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Requests before counting starts (V8 compiles the hot code meanwhile).
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// The short run whose count is subtracted (per-connection costs).
    #[arg(long, default_value_t = 200)]
    small: u64,
    /// The measured run, made twice.
    #[arg(long, default_value_t = 2200)]
    requests: u64,
    /// Seconds of idling counted after the runs.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Another upstream-tagger build to measure, LABEL=PATH (repeatable).
    #[arg(long = "module", value_parser = module)]
    modules: Vec<(String, PathBuf)>,
    /// Only these configurations (keys as printed, e.g. sidecar-no-filter; repeatable).
    #[arg(long)]
    only: Vec<String>,
    #[command(flatten)]
    inputs: bench::InputFlags,
    /// Where the dumps, logs and callgrind.md/.json go (under callgrind/).
    #[arg(long, default_value_os_t = bench::benchmark::default_out_dir())]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = match bench::parse_args::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    harness::process::stop_children_on_signals();
    let opts = Options {
        envoy: args.inputs.envoy,
        wasm: args.inputs.wasm,
        empty_wasm: args.inputs.empty_wasm,
        modules: args.modules,
        warmup: args.warmup,
        small: args.small,
        requests: args.requests,
        idle_secs: args.idle_secs,
        only: args.only,
        out_dir: args.out,
        istio_dir: args.inputs.istio_dir,
    };
    let rows = match callgrind::count_instructions(&opts) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("callgrind: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let markdown = callgrind::markdown(&rows, &opts);
    print!("{markdown}");
    let dir = opts.out_dir.join("callgrind");
    let written = std::fs::write(dir.join("callgrind.md"), &markdown).and_then(|()| {
        std::fs::write(
            dir.join("callgrind.json"),
            serde_json::to_vec_pretty(&rows).unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        eprintln!(
            "callgrind: error: cannot write the results under {}: {e}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
