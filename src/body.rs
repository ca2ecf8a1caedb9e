//! Body types of the proxy, as enums rather than boxed trait objects so the hot path of a
//! pass-through request allocates nothing for its bodies.
//!
//! [`ProxyBody`] is what the shim sends, both to clients (an upstream answer streamed as it
//! arrives, or a body the shim made) and to the upstream (a client's body streamed as it
//! arrives, or nothing).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::Metrics;

/// Boxed error type carried by every body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body failed while it was streamed upstream (malformed chunked framing,
/// or the client went away mid-body): the client's fault, not the upstream's, so the proxy
/// answers 400 and counts no upstream error (see `proxy::client`).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyError(#[source] pub hyper::Error);

pin_project_lite::pin_project! {
    /// A body that is either streamed from a peer or fully in memory.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A client's request body streamed toward the upstream, frame by frame, never
        /// buffered whole; its errors are [`ClientBodyError`]s.
        Stream { #[pin] inner: Incoming },
        /// An upstream answer streamed toward a client. Its head has already gone out, so an
        /// error here (the upstream reset or closed the connection mid-body) can only cut the
        /// client's response short; it is counted as an upstream `reset` and logged.
        Upstream {
            #[pin]
            inner: Incoming,
            metrics: Metrics,
            request_id: HeaderValue,
        },
        /// Made by the shim (error bodies, cached answers).
        Full { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    /// A body holding `data`.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody::Full {
            data: if data.is_empty() { None } else { Some(data) },
        }
    }

    /// A client's request body streamed from `inner`.
    pub fn stream(inner: Incoming) -> Self {
        ProxyBody::Stream { inner }
    }

    /// An upstream answer's body streamed from `inner`, whose failure is counted and logged.
    pub fn from_upstream(inner: Incoming, metrics: Metrics, request_id: HeaderValue) -> Self {
        ProxyBody::Upstream {
            inner,
            metrics,
            request_id,
        }
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::empty()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Stream { inner } => inner
                .poll_frame(cx)
                .map_err(|e| Box::new(ClientBodyError(e)) as BoxError),
            ProxyBodyProj::Upstream {
                inner,
                metrics,
                request_id,
            } => inner.poll_frame(cx).map_err(|e| {
                metrics.upstream_error("reset");
                tracing::warn!(
                    request_id = ?request_id,
                    kind = "reset",
                    error = %e,
                    "upstream broke the connection mid-body; the client's response is cut short"
                );
                e.into()
            }),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream { inner } => inner.is_end_stream(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream { inner } => inner.size_hint(),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
            }
        }
    }
}
