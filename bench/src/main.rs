//! `bench`: see the crate docs and the README section "bench".

use std::{path::PathBuf, process::ExitCode, time::Duration};

use bench::benchmark::{self, Options};
use clap::Parser;

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
}

/// Measure upstream-tagger's cost in real Envoy next to no filter, Envoy's
/// native header_mutation, an empty proxy-wasm filter and a Lua equivalent;
/// the echo server against tonic's hello-world; and connection churn.
/// Prints a Markdown table and writes it with a JSON copy under target/bench/.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Short run (seconds, not minutes) to check the harness; numbers are not meaningful.
    #[arg(long)]
    quick: bool,
    /// Rounds alternating the configurations [default: 5; quick: 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// Load before each measurement [default: 1s; quick: 200ms].
    #[arg(long, value_parser = duration)]
    warmup: Option<Duration>,
    /// Measured load per configuration and round [default: 4s; quick: 600ms].
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Unloaded-latency run (1 connection, 1 in flight) per configuration and round [default: 2s; quick: 300ms].
    #[arg(long, value_parser = duration)]
    latency_duration: Option<Duration>,
    /// h2load connections.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// h2load concurrent streams per connection.
    #[arg(long, default_value_t = 10)]
    streams: u32,
    /// Short connections in the churn run [default: 100000; quick: 3000].
    #[arg(long)]
    churn_connections: Option<u64>,
    /// Churn connections open at a time.
    #[arg(long, default_value_t = 16)]
    churn_parallel: u64,
    /// Where the report (report.md/report.json, quick.md/quick.json with --quick) and run logs go.
    #[arg(long, default_value_os_t = benchmark::default_out_dir())]
    out: PathBuf,
    #[command(flatten)]
    inputs: bench::InputFlags,
}

fn main() -> ExitCode {
    let args = match bench::parse_args::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    harness::process::stop_children_on_signals();
    let q = args.quick;
    let opts = Options {
        quick: q,
        rounds: args.rounds.unwrap_or(if q { 2 } else { 5 }),
        warmup: args
            .warmup
            .unwrap_or(Duration::from_millis(if q { 200 } else { 1000 })),
        duration: args
            .duration
            .unwrap_or(Duration::from_millis(if q { 600 } else { 4000 })),
        latency_duration: args.latency_duration.unwrap_or(Duration::from_millis(if q {
            300
        } else {
            2000
        })),
        clients: args.clients,
        streams: args.streams,
        churn_connections: args
            .churn_connections
            .unwrap_or(if q { 3_000 } else { 100_000 }),
        churn_parallel: args.churn_parallel,
        out_dir: args.out,
        envoy: args.inputs.envoy,
        wasm: args.inputs.wasm,
        empty_wasm: args.inputs.empty_wasm,
        istio_dir: args.inputs.istio_dir,
    };
    let report = match benchmark::run_phases(&opts) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let markdown = report.markdown();
    print!("{markdown}");
    let stem = if opts.quick { "quick" } else { "report" };
    let md = opts.out_dir.join(format!("{stem}.md"));
    let json = opts.out_dir.join(format!("{stem}.json"));
    let written = std::fs::write(&md, &markdown).and_then(|()| {
        std::fs::write(
            &json,
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        )
    });
    match written {
        Ok(()) => {
            eprintln!("bench: wrote {} and {}", md.display(), json.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "bench: error: cannot write the report under {}: {e}",
                opts.out_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
