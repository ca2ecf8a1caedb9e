//! The upstream connector: every upstream connection holds one permit of
//! `upstream.max_connections` for its whole life (pooled, busy, or carrying a tunnel), so
//! however many HTTP/2 streams clients open, the process holds at most that many; a request
//! that finds none free waits up to `connect_timeout`, then fails [`Busy`] (a 503). And a
//! connection whose request got no answer head is aborted at once, even when the request body
//! is still blocked toward an upstream that does not read: its I/O fails, which ends hyper's
//! connection task and frees the socket, the permit, and the client's body with it
//! (spec/shim.md §7).

use super::idle::IdleRegistry;
use crate::read_cap::ReadCap;
use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connector's error when every permit stayed taken for `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("every upstream connection is busy")]
pub(super) struct Busy;

/// Aborts the connection a request went out on, when dropped before it is disarmed (set to
/// `None` once the answer head arrived). Dropped armed: the response timeout fired, the
/// request failed, or the handler's future was dropped because the client went away.
pub(super) struct AbortUnanswered(pub(super) Option<CaptureConnection>);

impl Drop for AbortUnanswered {
    fn drop(&mut self) {
        let Some(capture) = self.0.take() else { return };
        let meta = capture.connection_metadata();
        if let Some(connected) = meta.as_ref() {
            // A connection that never answered this request must not serve another either.
            connected.poison();
            let mut ext = http::Extensions::new();
            connected.get_extras(&mut ext);
            if let Some(abort) = ext.get::<Abort>() {
                abort.abort();
            }
        }
    }
}

/// Closes one upstream connection from outside its task (see [`Capped`]): a flag its I/O
/// reads (one atomic load per read or write, nothing more on the hot path) and the waker of
/// the task blocked on it, registered only when its I/O is about to wait.
#[derive(Clone, Default)]
pub(super) struct Abort(Arc<AbortState>);

#[derive(Default)]
struct AbortState {
    aborted: AtomicBool,
    waker: AtomicWaker,
}

impl Abort {
    /// Aborts the connection: its next read or write fails, and the task blocked on it wakes.
    pub(super) fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::Acquire)
    }
}

/// The handle that aborts the connection `io` (see [`Capped`]), for a connection held outside
/// the pool.
pub(super) fn abort_handle(io: &impl Connection) -> Option<Abort> {
    let mut ext = http::Extensions::new();
    io.connected().get_extras(&mut ext);
    ext.get::<Abort>().cloned()
}

/// Wraps the TCP connector (under TLS, so the cap and the abort hold for `https` too): each
/// connection first takes a permit of the process-wide cap, waiting at most `wait`
/// (`connect_timeout`) for one, and keeps it until it closes.
#[derive(Clone)]
pub struct CappedConnector {
    inner: HttpConnector,
    permits: Arc<Semaphore>,
    wait: Duration,
    /// Idle kept connections, closed to free a permit when none is (see `idle.rs`).
    idle: Arc<IdleRegistry>,
}

impl CappedConnector {
    /// Wraps `inner`; each connection takes one of `permits` (closing an idle kept connection
    /// of `idle` when none is free), waiting at most `wait`.
    pub(super) fn new(
        inner: HttpConnector,
        permits: Arc<Semaphore>,
        wait: Duration,
        idle: Arc<IdleRegistry>,
    ) -> Self {
        CappedConnector {
            inner,
            permits,
            wait,
            idle,
        }
    }
}

impl tower_service::Service<Uri> for CappedConnector {
    type Response = Capped;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The clone that was made ready goes into the future; a fresh clone stays.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let permits = self.permits.clone();
        let idle = self.idle.clone();
        let wait = self.wait;
        Box::pin(async move {
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match at_the_cap(&permits, &idle, wait).await {
                    Some(p) => p,
                    None => return Err(Box::new(Busy) as Self::Error),
                },
            };
            let io = inner
                .call(uri)
                .await
                .map_err(|e| Box::new(e) as Self::Error)?;
            let io = TokioIo::new(ReadCap::new(io.into_inner()));
            Ok(Capped {
                io,
                _permit: permit,
                abort: Abort::default(),
            })
        })
    }
}

/// How often a connect waiting at the cap looks again for a kept connection gone idle (a
/// kept connection does not announce that it went idle: it only frees its permit when closed).
const RECLAIM_EVERY: Duration = Duration::from_millis(5);

/// Waits up to `wait` for a permit at the cap: an idle kept connection gives its permit back
/// first, and the kept connections are looked at again every [`RECLAIM_EVERY`] while waiting
/// (one that goes idle meanwhile is taken, as the pool hands a waiter the next connection that
/// comes back). `None`: every connection stayed busy.
async fn at_the_cap(
    permits: &Arc<Semaphore>,
    idle: &IdleRegistry,
    wait: Duration,
) -> Option<OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        idle.reclaim_one();
        let next = (tokio::time::Instant::now() + RECLAIM_EVERY).min(deadline);
        tokio::select! {
            p = permits.clone().acquire_owned() => return p.ok(),
            _ = tokio::time::sleep_until(next) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return permits.clone().try_acquire_owned().ok();
        }
    }
}

/// An upstream connection holding its permit, which an [`Abort`] can close: once
/// aborted, every read and write fails, so hyper's connection task ends (even one blocked on a
/// write toward an upstream that does not read, since the abort wakes it) and drops it. The
/// socket is closed with a reset (zero linger): a plain close would queue the FIN behind the
/// unsent body, which an upstream that does not read never takes, and the kernel would hold
/// the connection on.
///
/// Its reads take at most [`READ_CAP`](crate::read_cap::READ_CAP) bytes at a time: hyper's read-ahead on an upstream
/// connection would otherwise grow to ~400 KiB toward a client that reads slowly (the largest
/// response head hyper takes is unchanged; it is read in several reads).
pub struct Capped {
    io: TokioIo<ReadCap<TcpStream>>,
    _permit: OwnedSemaphorePermit,
    abort: Abort,
}

impl Drop for Capped {
    /// An aborted connection dropped before its I/O noticed (a client connection that went
    /// away drops the upstream connection it kept, unpolled) still closes with a reset, for
    /// the reason given on [`Capped`].
    fn drop(&mut self) {
        if self.abort.is_aborted() {
            let _ = self.io.inner().get_ref().set_zero_linger();
        }
    }
}

impl Capped {
    /// `Err` once aborted.
    fn check(&self) -> io::Result<()> {
        if self.abort.is_aborted() {
            let _ = self.io.inner().get_ref().set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the request on this upstream connection was abandoned",
            ));
        }
        Ok(())
    }

    /// After an I/O call: when it is to wait, the abort must be able to wake the task, so its
    /// waker is registered (then the flag is read again, for an abort that came in between).
    fn after<T>(&self, cx: &Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_pending() {
            self.abort.0.waker.register(cx.waker());
            self.check()?;
        }
        r
    }
}

impl Read for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.after(cx, r)
    }
}

impl Write for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.after(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for Capped {
    fn connected(&self) -> Connected {
        self.io
            .inner()
            .get_ref()
            .connected()
            .extra(self.abort.clone())
    }
}
