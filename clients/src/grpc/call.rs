//! One getInfo over the configured connection strategy, and how a failed
//! call is named: the canonical gRPC code, with tonic's transport errors
//! mapped as grpc-go reports them.

use std::{error::Error as _, sync::Arc, time::Duration};

use hyper::{HeaderMap, Uri, http::uri::Authority};
use proto::{InfoRequest, PodClient};
use tonic::{
    Code, Status, TimeoutExpired,
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use super::{Config, Keepalive, round_robin::Pool};
use crate::{
    calling_loop::Caller,
    duration::format_duration,
    record::{Call, error_text, tags_from_headers},
};

pub(super) fn endpoint(target: &Authority, config: &Config) -> Endpoint {
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.clone())
        .path_and_query("/")
        .build()
        .expect("scheme, a parsed authority and / make a valid URI");
    with_keepalive(Endpoint::from(uri), config.keepalive).connect_timeout(config.timeout)
}

/// `endpoint` with `keepalive`'s PINGs, if any.
pub(super) fn with_keepalive(endpoint: Endpoint, keepalive: Option<Keepalive>) -> Endpoint {
    match keepalive {
        Some(k) => endpoint
            .http2_keep_alive_interval(k.time)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(true),
        None => endpoint,
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) delay_ms: u32,
    pub(super) timeout: Duration,
    pub(super) metadata: HeaderMap,
}

#[derive(Clone)]
pub(super) enum Connection {
    /// One channel shared by every caller: one HTTP/2 connection, reconnected
    /// by tonic when it breaks.
    Reuse(Channel),
    /// Connect, call, close.
    PerCall(Arc<Endpoint>),
    RoundRobin(Arc<Pool>),
}

pub struct GrpcCaller {
    pub(super) connection: Connection,
    pub(super) shared: Arc<Shared>,
}

impl Shared {
    fn request(&self) -> tonic::Request<InfoRequest> {
        let mut request = tonic::Request::new(InfoRequest {
            delay_ms: self.delay_ms,
        });
        *request.metadata_mut() = MetadataMap::from_headers(self.metadata.clone());
        // The deadline travels as grpc-timeout too, so proxies and the server
        // give up when we do.
        request.set_timeout(self.timeout);
        request
    }
}

impl Caller for GrpcCaller {
    async fn call(&mut self) -> Call {
        let shared = &self.shared;
        let attempt = async {
            match &self.connection {
                Connection::Reuse(channel) => get_info(channel, shared).await,
                Connection::PerCall(endpoint) => match endpoint.connect().await {
                    Ok(channel) => get_info(&channel, shared).await,
                    Err(e) => Call::error("UNAVAILABLE", error_text("connect", Some(&e))),
                },
                Connection::RoundRobin(pool) => pool.call(shared).await,
            }
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(shared.timeout, attempt).await {
            // tonic's own timer can win the race and, when the timeout error
            // reaches us inside another Status, only "CANCELLED" is left of
            // it: a call that ran out our deadline is DEADLINE_EXCEEDED either
            // way (we never cancel).
            Ok(call)
                if started.elapsed() >= shared.timeout
                    && matches!(&call.outcome, Err(e) if e.code == "CANCELLED") =>
            {
                Call::error("DEADLINE_EXCEEDED", deadline_message(shared.timeout))
                    .with_tags(call.tags)
            }
            Ok(call) => call,
            Err(_) => Call::error("DEADLINE_EXCEEDED", deadline_message(shared.timeout)),
        }
    }
}

/// Sends of one getInfo that no server processed, at most: the retry may race
/// the next connection's close too (a proxy closing after every request), so
/// once is not enough on a busy machine; a bound keeps a dead peer from
/// looping.
const UNPROCESSED_ATTEMPTS: usize = 3;

/// One getInfo. A request the server never processed because its connection
/// went away first (a proxy that closes after N requests, e.g. Envoy's
/// `max_requests_per_connection`, or a server draining) is sent again, as
/// grpc-go's transparent retry does: the Go demo's client would not report
/// it either, and getInfo is read-only anyway.
pub(super) async fn get_info(channel: &Channel, shared: &Shared) -> Call {
    let mut result = PodClient::new(channel.clone())
        .get_info(shared.request())
        .await;
    for _ in 1..UNPROCESSED_ATTEMPTS {
        match &result {
            Err(status) if unprocessed(status) => {
                log::debug!("request not processed, its connection went away; sending it again");
                result = PodClient::new(channel.clone())
                    .get_info(shared.request())
                    .await;
            }
            _ => break,
        }
    }
    match result {
        Ok(response) => {
            let tags = tags_from_headers(response.metadata().as_ref());
            let info = response.into_inner();
            let mut call = Call::ok(info.name).with_tags(tags);
            // Empty/zero: an older server (the Go demo) that does not say.
            call.peer = (!info.peer.is_empty()).then_some(info.peer);
            call.conn_requests = (info.connection_requests > 0).then_some(info.connection_requests);
            call
        }
        Err(status) => status_call(&status, shared.timeout),
    }
}

/// The server never processed the request: hyper gave it back unsent (its
/// connection closed first), the server refused the stream, or its graceful
/// GOAWAY came before this stream.
fn unprocessed(status: &Status) -> bool {
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let graceful_goaway =
                h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            return graceful_goaway || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = e.source();
    }
    false
}

/// The connection broke under a call the server had started: the server was
/// killed, or cut its connections at the end of a drain. Only errors of our
/// own transport count (a status the server sent has no source), and only
/// the connection-level ones: a stream reset keeps tonic's code for it.
fn connection_lost(status: &Status) -> bool {
    let mut cause = status.source();
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_io() || (h2.is_go_away() && h2.is_remote());
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_closed() || hyper.is_incomplete_message())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

/// A failed call: canonical code, message with its causes, and the tags the
/// error response carried (trailers-only responses put them in the status).
pub fn status_call(status: &Status, timeout: Duration) -> Call {
    let tags = tags_from_headers(status.metadata().as_ref());
    // tonic reports its own enforcement of our deadline as CANCELLED; grpc-go
    // and grpcurl call that DEADLINE_EXCEEDED, and so do we.
    let mut cause = status.source();
    while let Some(e) = cause {
        if e.downcast_ref::<TimeoutExpired>().is_some() {
            return Call::error("DEADLINE_EXCEEDED", deadline_message(timeout)).with_tags(tags);
        }
        cause = e.source();
    }
    // tonic says UNKNOWN, CANCELLED or INTERNAL when a connection went away
    // under the request; gRPC's status-code table says UNAVAILABLE (we never
    // cancel).
    let code = if unprocessed(status) || connection_lost(status) {
        "UNAVAILABLE"
    } else {
        code_name(status.code())
    };
    Call::error(code, error_text(status.message(), status.source())).with_tags(tags)
}

fn deadline_message(timeout: Duration) -> String {
    format!("no answer within {}", format_duration(timeout))
}

/// The canonical (grpc-go, grpcurl) spelling of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_canonical_spelling() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unimplemented), "UNIMPLEMENTED");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn status_errors_carry_their_tags() {
        let mut status = Status::unavailable("upstream connect error\nreset");
        status
            .metadata_mut()
            .insert(wire::headers::UPSTREAM_POD, "server-1".parse().unwrap());
        let call = status_call(&status, Duration::from_secs(1));
        assert_eq!(
            call.outcome.unwrap_err(),
            crate::record::CallError {
                code: "UNAVAILABLE".into(),
                message: "upstream connect error reset".into()
            }
        );
        assert_eq!(call.tags.pod.as_deref(), Some("server-1"));
    }
}
