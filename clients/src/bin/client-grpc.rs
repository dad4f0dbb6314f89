//! `client-grpc --host server:30051`: see `clients::grpc`.

use std::process::ExitCode;

use clients::{cli, grpc, signal::shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args: grpc::Args = cli::parse_or_exit();
    let (config, loop_config) = args.config().unwrap_or_else(|e| cli::usage_exit(&e));
    cli::init_logging();
    log::info!("{}", args.describe());
    // A DNS server that never answers would fail every call for the whole
    // run; say so once and stop. A name it does not know yet is fine.
    if let Err(e) = config.resolver.probe(&config.targets).await {
        eprintln!("client-grpc: {e}");
        return ExitCode::from(cli::EX_UNAVAILABLE);
    }
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = grpc::run(config, &loop_config, std::io::stdout(), shutdown).await;
    cli::exit_code(&summary)
}
