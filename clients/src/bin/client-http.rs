//! `client-http --url http://server:80/pod`: see `clients::http`.

use std::process::ExitCode;

use clients::{cli, http, signal::shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args: http::Args = cli::parse_or_exit();
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
    let summary = http::run(config, &loop_config, std::io::stdout(), shutdown).await;
    cli::exit_code(&summary)
}
