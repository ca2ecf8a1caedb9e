//! One client connection's life, below the listeners that accept it (the client port in
//! `server/`, the admin port in `admin.rs`): the front door (`front.rs`: the PROXY protocol
//! header and the TLS handshake, within the first head's deadline), the byte-level sniffer that sees what hyper hides
//! (`sniff.rs`: CL+TE conflicts, the HTTP/2 preface), the clock that bounds how long it may
//! stay without a request and the slot it holds (`clock.rs`), and [`drive`], which serves it
//! until it ends, drains, or runs out of time.

pub mod clock;
pub mod front;
pub mod sniff;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio_util::sync::CancellationToken;

use sniff::ConnFlags;

/// Something a client connection's task drives beside the connection itself (the upstream
/// connection it keeps, `upstream::local`), so that their exchanges cross no task.
pub trait DrivenBeside: Send {
    /// Polls it; it registers `cx`'s waker for whatever it waits on.
    fn poll_drive(&self, cx: &mut std::task::Context<'_>);
}

/// Serves one accepted connection until it ends: on `shutdown` (cancelled only after
/// `draining` is set), a graceful shutdown; when its
/// clock expires (no head in time, or an idle HTTP/2 connection), it is closed: HTTP/2 with
/// a GOAWAY first (bounded to one second), HTTP/1.x at once (there is no request to finish).
///
/// `local`, the upstream connection the client connection keeps, is driven here too, in the
/// same task: polled before the client connection (an answer that arrived reaches its request
/// in this same poll) and after it (a request just handed to it goes out in this same poll).
pub async fn drive<C>(
    conn: C,
    flags: &ConnFlags,
    shutdown: &CancellationToken,
    draining: &AtomicBool,
    peer: SocketAddr,
    local: Option<&(dyn DrivenBeside + Sync)>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    enum Next<E> {
        Ended(Result<(), E>),
        Shutdown,
        Expired,
    }
    let mut conn = std::pin::pin!(conn);
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let mut expired = std::pin::pin!(flags.clock.expired());
    let mut shutting_down = false;
    // `shutdown`'s future is polled once, to register the task, then only once `draining` is
    // set (which happens before the token is cancelled): polling it takes a lock, every time.
    let mut registered = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Some(l) = local {
                l.poll_drive(cx);
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Next::Ended(r));
            }
            if let Some(l) = local {
                l.poll_drive(cx);
            }
            if !shutting_down && (!registered || draining.load(Ordering::Acquire)) {
                registered = true;
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Shutdown);
                }
            }
            if expired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Next::Expired);
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Ended(r) => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            Next::Shutdown => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            Next::Expired => {
                let h2 = flags.clock.is_h2();
                tracing::debug!(%peer, h2, "client connection closed: no request head in time, or idle");
                if h2 {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let mut conn = conn.as_mut();
                        std::future::poll_fn(|cx| {
                            if let Some(l) = local {
                                l.poll_drive(cx);
                            }
                            conn.as_mut().poll(cx)
                        })
                        .await
                    })
                    .await;
                }
                return;
            }
        }
    }
}
