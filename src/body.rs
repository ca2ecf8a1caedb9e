//! Body types of the proxy, as enums rather than boxed trait objects so the hot path of a
//! pass-through request allocates nothing for the body types themselves.
//!
//! [`ProxyBody`] is what the shim sends, both to clients (an upstream answer streamed as it
//! arrives, or a body the shim made) and to the upstream (a client's body streamed as it
//! arrives, or nothing).
//!
//! Streamed bodies are copied frame by frame and go on in pieces of at most [`PIECE`] bytes. A
//! frame hyper reads is a slice of its whole read buffer, and a write queue of such slices
//! toward a peer that reads slowly (a slow client, or an upstream that does not take an
//! upload) pins every buffer they came from: 1.2 to 1.4 MiB per slow peer was measured. A copy
//! leaves the read buffer free for reuse at once, and small pieces let hyper's write-queue
//! limit (16 entries) bite finely, so what one direction of one request holds is about its
//! read buffer, one frame and the write queue (spec/shim.md §7: at most 256 KiB a direction;
//! reads, hence frames, are capped by `read_cap`, HTTP/2 buffers set in `server::builder`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::Metrics;

/// The largest piece of a streamed body handed on at once (see the module doc).
pub const PIECE: usize = 4 * 1024;

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
        Stream { #[pin] inner: Incoming, rest: Bytes },
        /// An upstream answer streamed toward a client. Its head has already gone out, so an
        /// error here (the upstream reset or closed the connection mid-body) can only cut the
        /// client's response short; it is counted as an upstream `reset` and logged.
        Upstream {
            #[pin]
            inner: Incoming,
            rest: Bytes,
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
        ProxyBody::Stream {
            inner,
            rest: Bytes::new(),
        }
    }

    /// An upstream answer's body streamed from `inner`, whose failure is counted and logged.
    pub fn from_upstream(inner: Incoming, metrics: Metrics, request_id: HeaderValue) -> Self {
        ProxyBody::Upstream {
            inner,
            rest: Bytes::new(),
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
            ProxyBodyProj::Stream { inner, rest } => {
                if let Some(piece) = next_piece(rest) {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                inner
                    .poll_frame(cx)
                    .map_err(|e| Box::new(ClientBodyError(e)) as BoxError)
                    .map(|f| split_frame(f, rest))
            }
            ProxyBodyProj::Upstream {
                inner,
                rest,
                metrics,
                request_id,
            } => {
                if let Some(piece) = next_piece(rest) {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                inner
                    .poll_frame(cx)
                    .map_err(|e| {
                        metrics.upstream_error("reset");
                        tracing::warn!(
                            request_id = ?request_id,
                            kind = "reset",
                            error = %e,
                            "upstream broke the connection mid-body; the client's response is cut short"
                        );
                        e.into()
                    })
                    .map(|f| split_frame(f, rest))
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream { inner, rest } | ProxyBody::Upstream { inner, rest, .. } => {
                rest.is_empty() && inner.is_end_stream()
            }
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream { inner, rest } | ProxyBody::Upstream { inner, rest, .. } => {
                let inner = inner.size_hint();
                let more = rest.len() as u64;
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(more));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(more));
                }
                hint
            }
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
            }
        }
    }
}

/// The next piece of `rest` (a slice of the shim's own copy of a frame).
fn next_piece(rest: &mut Bytes) -> Option<Bytes> {
    if rest.is_empty() {
        return None;
    }
    let n = rest.len().min(PIECE);
    Some(rest.split_to(n))
}

/// A data frame is copied (its read buffer is free for the next read at once) and becomes its
/// first piece, the remainder kept in `rest`; other frames (trailers) and errors pass as they
/// are.
fn split_frame(
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    rest: &mut Bytes,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    match frame {
        Some(Ok(f)) => match f.into_data() {
            Ok(data) => {
                *rest = Bytes::copy_from_slice(&data);
                drop(data);
                Some(Ok(Frame::data(next_piece(rest).unwrap_or_default())))
            }
            Err(f) => Some(Ok(f)),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_into_copied_pieces() {
        let big = Bytes::from(vec![7u8; PIECE * 2 + 5]);
        let mut rest = Bytes::new();
        let first = split_frame(Some(Ok(Frame::data(big.clone()))), &mut rest)
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default();
        assert_eq!(first.len(), PIECE);
        assert_eq!(next_piece(&mut rest).map(|p| p.len()), Some(PIECE));
        assert_eq!(next_piece(&mut rest).map(|p| p.len()), Some(5));
        assert_eq!(next_piece(&mut rest), None);
        // A copy: the pieces do not share the frame's allocation.
        assert_ne!(first.as_ptr(), big.as_ptr());
    }
}
