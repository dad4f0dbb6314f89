//! Per-connection facts: each accepted TCP connection gets one `ConnInfo`
//! that lives exactly as long as the connection, so "requests on this
//! connection" needs no global map and no cleanup.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The server's view of one connection: who is on the other end and how
/// many requests have arrived on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer` formatted once per connection, not once per call.
    pub peer_text: Arc<str>,
    requests: Arc<AtomicU64>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            peer_text: peer.to_string().into(),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Count one more request on this connection; returns its 1-based index.
    pub fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A TCP stream that carries its `ConnInfo` into tonic's request extensions.
pub struct TrackedStream {
    inner: TcpStream,
    info: ConnInfo,
}

impl TrackedStream {
    pub fn new(inner: TcpStream) -> io::Result<Self> {
        let peer = inner.peer_addr()?;
        // Echo calls are tiny request/response pairs: don't let Nagle hold them.
        inner.set_nodelay(true)?;
        Ok(Self {
            inner,
            info: ConnInfo::new(peer),
        })
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ConnInfo::new(*stream.remote_addr())
    }
}
