//! Echo server: gRPC (`api.protobuf.pod/getInfo`, health, reflection) and
//! HTTP (`/pod`, `/healthz`, `/`), both answering with the pod name and the
//! server's view of the connection the call came on.

mod conn;
mod echo;
mod grpc;
mod http;
mod track;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use conn::{ConnInfo, ConnTimeouts};
pub use http::{HttpState, app as http_app};

/// Largest gRPC message the server decodes. Requests are a few bytes; anything
/// near this is garbage or abuse and gets OUT_OF_RANGE (tonic's code for
/// it). Applies to every service on the port, health and reflection too.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Concurrent gRPC calls (HTTP/2 streams) one connection may have open;
/// further streams are refused (`REFUSED_STREAM`) until one ends. RFC 9113
/// recommends no less than 100; without a limit, one connection opening
/// thousands of never-finished streams held megabytes per thousand.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// How much longer than `max_delay` a call may take by default before the
/// server cuts it (`--call-timeout`).
pub const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// Everything the server needs, as a plain struct tests build directly.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub pod_name: String,
    /// After a stop signal: how long to keep serving while reporting
    /// NOT_SERVING, so load balancers stop sending new calls.
    pub drain_grace: Duration,
    /// Then: how long in-flight calls get before connections are cut.
    pub drain_timeout: Duration,
    /// Upper bound for a request's `delay_ms`.
    pub max_delay: Duration,
    /// Every gRPC call is cut (CANCELLED) after this long, its stream reset:
    /// a client that never finishes its request cannot hold a stream. Must
    /// exceed `max_delay`.
    pub call_timeout: Duration,
    /// Connection timeouts, both ports.
    pub timeouts: ConnTimeouts,
    /// gRPC port only: a connection this old gets GOAWAY (tonic's
    /// `max_connection_age`, no jitter); its calls finish, new ones go to a
    /// new connection. `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// gRPC port only: how long after `max_connection_age` calls still
    /// running get before the connection is closed under them. `None`: as
    /// long as they take. Needs `max_connection_age`.
    pub max_connection_age_grace: Option<Duration>,
}

impl Config {
    /// Both listeners on 127.0.0.1 ephemeral ports: for tests and local runs.
    pub fn local(pod_name: impl Into<String>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pod_name: pod_name.into(),
            drain_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
            max_delay: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30) + CALL_TIMEOUT_MARGIN,
            timeouts: ConnTimeouts {
                header: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            },
            max_connection_age: None,
            max_connection_age_grace: None,
        }
    }

    /// What flags cannot check one by one; the error names the flags.
    pub fn check(&self) -> Result<(), String> {
        if self.call_timeout <= self.max_delay {
            return Err(format!(
                "--call-timeout ({}) must exceed --max-delay ({})",
                humantime::format_duration(self.call_timeout),
                humantime::format_duration(self.max_delay)
            ));
        }
        if self.timeouts.header.is_zero() || self.timeouts.idle.is_zero() {
            return Err("--header-timeout and --idle-timeout must be greater than 0".into());
        }
        if self.max_connection_age.is_some_and(|age| age.is_zero()) {
            return Err(
                "--max-connection-age must be greater than 0 (omit it for no age limit)".into(),
            );
        }
        match (self.max_connection_age, self.max_connection_age_grace) {
            (None, Some(_)) => {
                return Err("--max-connection-age-grace needs --max-connection-age: \
                     the grace counts from the age"
                    .into());
            }
            (Some(_), Some(grace)) if grace.is_zero() => {
                return Err("--max-connection-age-grace must be greater than 0 \
                     (omit it to let in-flight calls run as long as they take)"
                    .into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// A server whose listeners are bound (so their addresses are known) but not
/// yet serving.
pub struct Server {
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
}

impl Server {
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http_addr))?;
        Ok(Self { config, grpc, http })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serve until `shutdown` completes, then drain: health NOT_SERVING for
    /// `drain_grace`, then stop accepting, let in-flight calls finish and
    /// return within `drain_timeout`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let Self { config, grpc, http } = self;
        config.check().map_err(anyhow::Error::msg)?;
        // Cancelled when the drain timeout passes: every connection still
        // open is closed under its calls.
        let cut = CancellationToken::new();
        let pod_name: Arc<str> = config.pod_name.as_str().into();
        let serving = Arc::new(AtomicBool::new(true));
        let (drain_tx, drain_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::PodServer<grpc::PodService>>()
            .await;
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let pod_service =
            proto::PodServer::new(grpc::PodService::new(pod_name.clone(), config.max_delay))
                .max_decoding_message_size(MAX_MESSAGE_BYTES);

        // The grace is ours, not tonic's: tonic 0.14.9, given a grace, skips
        // the GOAWAY at the age and only drops the connection at age + grace,
        // failing the calls on it. So tonic gets the age (GOAWAY, then waits
        // for the calls) and the connection closes itself at age + grace.
        let incoming = conn::Acceptor::new("gRPC", grpc, config.timeouts, cut.clone())
            .with_max_lifetime(
                config
                    .max_connection_age
                    .zip(config.max_connection_age_grace)
                    .map(|(age, grace)| age + grace),
            )
            .into_stream();
        let mut grpc_builder = tonic::transport::Server::builder();
        if let Some(age) = config.max_connection_age {
            grpc_builder = grpc_builder.max_connection_age(age);
        }
        let mut grpc_task = tokio::spawn(
            grpc_builder
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .timeout(config.call_timeout)
                .layer(track::TrackRequestsLayer)
                .add_service(health_service.max_decoding_message_size(MAX_MESSAGE_BYTES))
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(pod_service)
                .serve_with_incoming_shutdown(incoming, drained(drain_rx.clone())),
        );

        let http_app = http::app(HttpState {
            pod_name: pod_name.clone(),
            serving: serving.clone(),
        });
        let mut http_task = tokio::spawn(
            axum::serve(
                conn::Acceptor::new("HTTP", http, config.timeouts, cut.clone()),
                http_app
                    .layer(track::TrackRequestsLayer)
                    .into_make_service_with_connect_info::<ConnInfo>(),
            )
            .with_graceful_shutdown(drained(drain_rx))
            .into_future(),
        );

        log::info!(
            "pod {pod_name}: gRPC on {grpc_addr}, HTTP on {http_addr} (health, reflection v1/v1alpha); \
             calls cut after {}, connections closed {} without a first request, {} idle; \
             gRPC connections: {}",
            humantime::format_duration(config.call_timeout),
            humantime::format_duration(config.timeouts.header),
            humantime::format_duration(config.timeouts.idle),
            age_text(config.max_connection_age, config.max_connection_age_grace),
        );

        tokio::select! {
            () = shutdown => {}
            // Listeners only stop on their own after a fatal error.
            joined = &mut grpc_task => return stopped_early("gRPC", joined),
            joined = &mut http_task => return stopped_early("HTTP", joined),
        }

        log::info!(
            "draining: NOT_SERVING for {:?}, then up to {:?} for in-flight calls",
            config.drain_grace,
            config.drain_timeout
        );
        serving.store(false, std::sync::atomic::Ordering::Relaxed);
        health
            .set_not_serving::<proto::PodServer<grpc::PodService>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tokio::time::sleep(config.drain_grace).await;
        let _ = drain_tx.send(true);

        let finished = tokio::time::timeout(config.drain_timeout, async {
            let grpc = (&mut grpc_task).await;
            let http = (&mut http_task).await;
            (grpc, http)
        })
        .await;
        match finished {
            Ok((grpc, http)) => {
                grpc.context("gRPC server task")?.context("gRPC server")?;
                http.context("HTTP server task")?.context("HTTP server")?;
                log::info!("drained, exiting");
            }
            Err(_) => {
                log::warn!(
                    "drain timeout {:?} reached: closing remaining connections",
                    config.drain_timeout
                );
                cut.cancel();
                grpc_task.abort();
                http_task.abort();
            }
        }
        Ok(())
    }
}

/// The age setting as the startup line shows it.
fn age_text(age: Option<Duration>, grace: Option<Duration>) -> String {
    match (age, grace) {
        (None, _) => "no max age".into(),
        (Some(age), None) => format!(
            "GOAWAY at age {}, calls then run as long as they take",
            humantime::format_duration(age)
        ),
        (Some(age), Some(grace)) => format!(
            "GOAWAY at age {}, closed {} later",
            humantime::format_duration(age),
            humantime::format_duration(grace)
        ),
    }
}

async fn drained(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: treat as drained.
    let _ = rx.wait_for(|draining| *draining).await;
}

fn stopped_early<E>(
    what: &str,
    joined: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match joined {
        Ok(Ok(())) => anyhow::bail!("{what} listener stopped unexpectedly"),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("{what} listener failed"))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{what} listener panicked"))),
    }
}
