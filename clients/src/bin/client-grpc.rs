//! `client-grpc --host server:30051`: see `clients::grpc`.

use std::process::ExitCode;

use clients::{cli, grpc, signal::shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args: grpc::Args = cli::parse_or_exit();
    let (config, loop_config) = args.config().unwrap_or_else(|e| cli::usage_exit(&e));
    cli::init_logging();
    log::info!("{}", args.describe());
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
