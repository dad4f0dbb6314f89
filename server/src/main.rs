use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;

/// Echo server for the grpc-lb demo: answers gRPC and HTTP with its pod name.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:30051")]
    grpc_addr: SocketAddr,
    /// HTTP listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Pod name to answer with; default: env POD_NAME (Downward API), else the hostname.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// After SIGTERM: keep serving with health NOT_SERVING this long (e.g. 5s in Kubernetes).
    #[arg(long, env = "DRAIN_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// Then: the longest in-flight calls get before the server exits.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Largest `delay_ms` a caller may ask for.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_delay: Duration,
    /// Every gRPC call is cut (CANCELLED, stream reset) after this long; must
    /// exceed --max-delay. [default: --max-delay + 5s]
    #[arg(long, env = "CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// Close a connection (either port) whose first request has not arrived
    /// this long after it was accepted: an HTTP/2 preface alone, or HTTP/1.1
    /// header lines trickling in.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Close a connection (either port) that has had no request in flight
    /// this long.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// gRPC port only (HTTP is not affected): send GOAWAY on a connection
    /// this old, e.g. 30s; its calls in flight finish, the client's next call
    /// opens a new connection, which an L4 balancer may send to another pod.
    /// Exactly this age, no jitter (grpc-go adds ±10%). [default: no limit]
    #[arg(long, env = "MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    max_connection_age: Option<Duration>,
    /// Then: how long calls still running get before the connection is
    /// closed under them (they fail). Needs --max-connection-age. [default:
    /// as long as they take, at most --call-timeout]
    #[arg(long, env = "MAX_CONNECTION_AGE_GRACE", value_parser = humantime::parse_duration)]
    max_connection_age_grace: Option<Duration>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-pod".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = server::Config {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        pod_name: args
            .pod_name
            .filter(|p| !p.is_empty())
            .unwrap_or_else(hostname),
        drain_grace: args.drain_grace,
        drain_timeout: args.drain_timeout,
        max_delay: args.max_delay,
        call_timeout: args
            .call_timeout
            .unwrap_or(args.max_delay + server::CALL_TIMEOUT_MARGIN),
        timeouts: server::ConnTimeouts {
            header: args.header_timeout,
            idle: args.idle_timeout,
        },
        max_connection_age: args.max_connection_age,
        max_connection_age_grace: args.max_connection_age_grace,
    };
    if let Err(e) = config.check() {
        // EX_USAGE, as for any other bad flag.
        eprintln!("server: {e}");
        return ExitCode::from(64);
    }
    let server = match server::Server::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("server: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match server.serve(stop_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM (what Kubernetes sends on pod deletion).
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}); Ctrl-C still works");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term.recv() => log::info!("SIGTERM received"),
    }
}
