//! `make bench`: what upstream-tagger costs inside real Envoy, next to the
//! alternatives a platform team would weigh (no filter, Envoy's native
//! header_mutation, an empty proxy-wasm filter, an equivalent Lua filter),
//! plus the echo server against tonic's hello-world and a connection-churn
//! run for the filter's per-connection state.
//!
//! Everything runs for real on 127.0.0.1: Envoy from `.venv`, h2load as the
//! load generator, each pinned to its own core when the machine has two.

pub mod benchmark;
pub mod callgrind;
pub mod configs;
pub mod echo_server;
pub mod envoy;
pub mod goals;
pub mod grpc;
pub mod h2load;
mod machine;
mod phase;
pub mod procfs;
pub mod report;
pub mod tools;

/// The programs and manifests both bench binaries load (their shared flags).
#[derive(clap::Args, Debug)]
pub struct InputFlags {
    /// Envoy binary [default: $ENVOY, else .venv/bin/envoy; the callgrind driver
    /// resolves a launcher script to its binary].
    #[arg(long)]
    pub envoy: Option<std::path::PathBuf>,
    /// upstream-tagger module [default: dist/upstream_tagger.wasm].
    #[arg(long)]
    pub wasm: Option<std::path::PathBuf>,
    /// The empty-filter module [default: target/wasm32-wasip1/wasm/empty_filter.wasm].
    #[arg(long)]
    pub empty_wasm: Option<std::path::PathBuf>,
    /// The manifests whose WasmPlugin is loaded [default: ./istio].
    #[arg(long)]
    pub istio_dir: Option<std::path::PathBuf>,
}

/// The command line, or the exit code to leave with: a usage error is 64
/// (EX_USAGE) after clap's message, `--help`/`--version` 0.
pub fn parse_args<A: clap::Parser>() -> Result<A, std::process::ExitCode> {
    A::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(64)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// tonic's hello-world service (`proto/helloworld.proto`), for the stock
/// server the echo server is compared with.
pub mod hello {
    tonic::include_proto!("helloworld");
}
