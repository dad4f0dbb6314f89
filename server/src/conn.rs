//! Per-connection facts and limits: each accepted TCP connection gets one
//! `ConnInfo` that lives exactly as long as the connection, so "requests on
//! this connection" needs no global map and no cleanup. The same wrapper
//! enforces the connection timeouts and the drain's final cut, for both ports,
//! and the end of a gRPC connection's max-age grace.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a connection may sit without a request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From accept to the first request's headers (HTTP/2: preface, settings
    /// and the first HEADERS; HTTP/1.1: the request line and header lines).
    pub header: Duration,
    /// After the last request finished, before the next one starts.
    pub idle: Duration,
}

/// The server's view of one connection: who is on the other end and how
/// many requests have arrived on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer` formatted once per connection, not once per call.
    pub peer_text: Arc<str>,
    requests: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

/// What the timeouts look at; shared by the stream and every request on it.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests whose response body has not finished.
    in_flight: AtomicU64,
    /// Any request seen yet: the header timeout applies until then.
    used: AtomicBool,
    /// Milliseconds after `opened` of the latest request start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// When the connection is to be closed if nothing happens meanwhile;
    /// `None` while a request is in flight.
    fn deadline(&self, timeouts: ConnTimeouts) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        // Read after `in_flight`: the last request's end is stored before its
        // count drops, so this is never older than that end.
        if self.used.load(Ordering::SeqCst) {
            let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
            Some(self.opened + last + timeouts.idle)
        } else {
            Some(self.opened + timeouts.header)
        }
    }
}

impl ConnInfo {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            peer_text: peer.to_string().into(),
            requests: Arc::new(AtomicU64::new(0)),
            activity: Arc::new(Activity {
                opened: Instant::now(),
                in_flight: AtomicU64::new(0),
                used: AtomicBool::new(false),
                last_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Count one more request on this connection; returns its 1-based index.
    pub fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Marks a request in flight until the returned guard is dropped (with
    /// the response body, see [`crate::track::TrackRequests`]).
    pub fn start_request(&self) -> InFlight {
        let activity = &self.activity;
        activity.used.store(true, Ordering::SeqCst);
        activity.touch();
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(activity.clone())
    }
}

/// One request in flight on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A TCP stream that carries its `ConnInfo` into request extensions and
/// closes itself when a timeout passes with no request in flight, when its
/// maximum lifetime passes (requests in flight or not), or when the server
/// cuts every connection at the end of a drain.
pub struct TrackedStream {
    inner: TcpStream,
    info: ConnInfo,
    timeouts: ConnTimeouts,
    timer: Pin<Box<Sleep>>,
    /// Max connection age + grace: by then the GOAWAY'd calls had their time.
    lifetime: Option<Pin<Box<Sleep>>>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl TrackedStream {
    fn new(
        inner: TcpStream,
        peer: SocketAddr,
        timeouts: ConnTimeouts,
        max_lifetime: Option<Duration>,
        cut: &CancellationToken,
    ) -> io::Result<Self> {
        // Echo calls are tiny request/response pairs: don't let Nagle hold them.
        inner.set_nodelay(true)?;
        let info = ConnInfo::new(peer);
        Ok(Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(
                info.activity.opened + timeouts.header,
            )),
            lifetime: max_lifetime
                .map(|life| Box::pin(tokio::time::sleep_until(info.activity.opened + life))),
            info,
            timeouts,
            cut: Box::pin(cut.clone().cancelled_owned()),
        })
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Ready with the reason once this connection is to be closed. Polled on
    /// every read and write, so the timer and the cut wake the connection's
    /// task (a server always has a read pending on an open connection).
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "drain timeout: connection cut",
            ));
        }
        if let Some(lifetime) = &mut self.lifetime
            && lifetime.as_mut().poll(cx).is_ready()
        {
            log::debug!("{}: max connection age grace over, closing", self.info.peer);
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "max connection age grace over",
            ));
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            match self.info.activity.deadline(self.timeouts) {
                Some(deadline) if deadline <= now => {
                    let which = if self.info.activity.used.load(Ordering::SeqCst) {
                        "idle timeout"
                    } else {
                        "header timeout"
                    };
                    log::debug!("{}: {which}, closing", self.info.peer);
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, which));
                }
                Some(deadline) => self.timer.as_mut().reset(deadline),
                // Busy: look again after the shortest time it could go idle for.
                None => self.timer.as_mut().reset(now + self.timeouts.idle),
            }
        }
    }
}

impl tonic::transport::server::Connected for TrackedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(e) = self.poll_closing(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(e) = self.poll_closing(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(e) = self.poll_closing(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections for one port. An accept that fails for lack of
/// resources (no file descriptors left, no memory) is retried with a backoff
/// from 5 ms doubling to 1 s, as Go's net/http does, and logged once per
/// episode rather than once per retry: the pending connection keeps the
/// listener readable, so retrying at once would spin a core.
pub struct Acceptor {
    name: &'static str,
    listener: TcpListener,
    timeouts: ConnTimeouts,
    max_lifetime: Option<Duration>,
    cut: CancellationToken,
    /// Failed accepts in the current episode.
    failures: u64,
    backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Acceptor {
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        timeouts: ConnTimeouts,
        cut: CancellationToken,
    ) -> Self {
        Self {
            name,
            listener,
            timeouts,
            max_lifetime: None,
            cut,
            failures: 0,
            backoff: MIN_BACKOFF,
        }
    }

    /// Every connection this accepts closes itself this long after it was
    /// accepted, requests in flight or not. `None`: no limit.
    pub fn with_max_lifetime(mut self, max_lifetime: Option<Duration>) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    pub async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if self.failures > 0 {
                        log::info!(
                            "{}: accepting connections again (after {} failed attempts)",
                            self.name,
                            self.failures
                        );
                        self.failures = 0;
                        self.backoff = MIN_BACKOFF;
                    }
                    match TrackedStream::new(
                        stream,
                        peer,
                        self.timeouts,
                        self.max_lifetime,
                        &self.cut,
                    ) {
                        Ok(stream) => return (stream, peer),
                        // The peer left already.
                        Err(e) => log::debug!("{}: dropping {peer}: {e}", self.name),
                    }
                }
                // This connection failed, not the listener.
                Err(e) if is_connection_error(&e) => {
                    log::debug!("{}: accept: {e}", self.name);
                }
                Err(e) => {
                    if self.failures == 0 {
                        log::warn!(
                            "{}: cannot accept connections: {e}; retrying with a backoff up to {:?} until it clears",
                            self.name,
                            MAX_BACKOFF
                        );
                    }
                    self.failures += 1;
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// For tonic, which takes a stream of connections; the stream never ends
    /// (tonic stops polling it, dropping the listener, when draining starts).
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<TrackedStream>> {
        futures_util::stream::unfold(self, |mut acceptor| async move {
            let (stream, _) = acceptor.accept().await;
            Some((Ok(stream), acceptor))
        })
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl axum::serve::Listener for Acceptor {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        Acceptor::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Acceptor>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Acceptor>) -> Self {
        stream.io().info().clone()
    }
}
