//! A tower layer, on both ports, that marks each request in flight on its
//! connection until its response body ends, so the idle timeout never closes
//! a connection under a running call or an open stream (health `Watch`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{body::Bytes, extract::ConnectInfo, http};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::conn::{ConnInfo, InFlight};

#[derive(Clone, Copy, Debug, Default)]
pub struct TrackRequestsLayer;

impl<S> Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> TrackRequests<S> {
        TrackRequests(inner)
    }
}

#[derive(Clone, Debug)]
pub struct TrackRequests<S>(S);

/// tonic puts `ConnInfo` in the extensions as is; axum wraps it.
fn conn_info<B>(request: &http::Request<B>) -> Option<&ConnInfo> {
    let extensions = request.extensions();
    extensions
        .get::<ConnInfo>()
        .or_else(|| extensions.get::<ConnectInfo<ConnInfo>>().map(|c| &c.0))
}

impl<S, B, R> Service<http::Request<B>> for TrackRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Dropped with the future if the call is abandoned (client reset,
        // call timeout), else handed to the body.
        let guard = conn_info(&request).map(ConnInfo::start_request);
        let future = self.0.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| Tracked {
                inner: body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _guard: Option<InFlight>,
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
