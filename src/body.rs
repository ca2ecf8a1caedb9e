//! Body types of the proxy, as enums rather than boxed trait objects so the hot path of a
//! pass-through request allocates nothing for its bodies.
//!
//! [`ProxyBody`] is what the shim sends, both to clients (an upstream answer streamed as it
//! arrives, or a body the shim made) and to the upstream (a client's body streamed as it
//! arrives, or nothing).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Boxed error type carried by every body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A body that is either streamed from a peer or fully in memory.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from the other side, frame by frame, never buffered whole.
        Stream { #[pin] inner: Incoming },
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

    /// A body streamed from `inner`.
    pub fn stream(inner: Incoming) -> Self {
        ProxyBody::Stream { inner }
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
            ProxyBodyProj::Stream { inner } => inner.poll_frame(cx).map_err(Into::into),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream { inner } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream { inner } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
            }
        }
    }
}
