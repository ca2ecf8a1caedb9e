//! The upstream connection a client connection keeps for itself: an HTTP/1.1 connection to
//! the upstream, made on the client connection's first pass-through request, reused for its
//! next ones, and driven by the client connection's own task (`connection::drive` polls it
//! beside the client connection), so a request and its answer cross no task, no channel
//! between tasks and no pool lock. What the pool is for stays with the pool
//! (`client.rs`): HTTP/2 clients (many streams on one connection), upgrades (the tunnel
//! outlives the request), the shim's own lookups, and the rare request that finds its
//! connection still busy.
//!
//! The pool's guarantees hold here too (spec/shim.md §7):
//! - the connection comes from the same connector: it holds a permit of
//!   `upstream.max_connections` for its whole life, TLS for an `https` upstream, `TCP_NODELAY`;
//!   and while idle it is given back when a connect finds the cap reached (`idle.rs`), so idle
//!   client connections never starve the pool or each other;
//! - idle longer than `upstream.pool_idle_timeout`, it is closed (lazily timed: one timer per
//!   period, not per request) and never reused;
//! - a request that was not yet written when the connection turned out closed (the upstream
//!   closed a keep-alive connection) is sent again on a fresh one; a written request is never
//!   sent twice;
//! - no head within `response_timeout` is a 504; when no head comes (the timeout, an error, or
//!   the client went away and dropped the request), the connection is aborted at once, with a
//!   reset, and never reused;
//! - a reload that changes the upstream is never answered by the old one's connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::MaybeHttpsStream;
use tokio::time::{Instant, Sleep};

use super::client::{exchange_failed, OwnConnection};
use super::connector::{Abort, Capped};
use super::idle::Reclaim;
use super::{Upstream, UpstreamError};
use crate::body::ProxyBody;
use crate::connection::DrivenBeside;

type Conn = Connection<MaybeHttpsStream<Capped>, ProxyBody>;

/// The upstream connection of one client connection (see the module comment). Shared between
/// the client connection's service (which sends) and its driver (which polls), both in the
/// same task: the lock is never contended.
pub struct LocalUpstream {
    slot: Mutex<Slot>,
    /// Itself, for the idle registry (`idle.rs`).
    me: Weak<LocalUpstream>,
}

#[derive(Default)]
struct Slot {
    held: Option<Held>,
    /// The client connection task, to wake when a connection is installed.
    driver: Option<Waker>,
    /// Numbers the connections, so that a sender goes back only to its own.
    serial: u64,
    /// Listed in the upstream's idle registry (once is enough: it holds a weak reference).
    listed_in: Option<u64>,
}

struct Held {
    conn: Pin<Box<Conn>>,
    /// Here while the connection is idle; taken by the request using it.
    sender: Option<SendRequest<ProxyBody>>,
    serial: u64,
    upstream_id: u64,
    abort: Option<Abort>,
    /// When the last request on it was sent.
    last_used: Instant,
    idle_timeout: Duration,
    /// Closes the connection once idle for `idle_timeout` (re-armed lazily, see `poll_drive`).
    idle_timer: Pin<Box<Sleep>>,
}

impl Held {
    /// Idle: no request holds its sender and the last answer's body is through (the
    /// connection asks for the next request). An answer's head is not enough: its body may
    /// still be streaming.
    fn is_idle(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.is_ready())
    }

    /// Aborts the connection (reset, never reused).
    fn abort(&self) {
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

/// A sender taken for one request.
struct Checkout {
    sender: SendRequest<ProxyBody>,
    serial: u64,
    /// Whether it served a request before (a fresh one is never retried).
    reused: bool,
}

impl LocalUpstream {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DrivenBeside for LocalUpstream {
    /// Drives the held connection: called from the client connection's task on every poll.
    /// A connection that ends (closed by the upstream, aborted, broken) is dropped; one idle
    /// past `pool_idle_timeout` is closed.
    fn poll_drive(&self, cx: &mut Context<'_>) {
        let mut slot = self.lock();
        match &slot.driver {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.driver = Some(cx.waker().clone()),
        }
        let Some(held) = slot.held.as_mut() else {
            return;
        };
        if let Poll::Ready(r) = held.conn.as_mut().poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "kept upstream connection ended with an error");
            }
            slot.held = None;
            return;
        }
        while held.idle_timer.as_mut().poll(cx).is_ready() {
            let due = held.last_used + held.idle_timeout;
            if held.is_idle() && due <= Instant::now() {
                // Idle too long: closed before the upstream's own keep-alive timeout can race
                // a request.
                slot.held = None;
                return;
            }
            let next = if held.is_idle() {
                due
            } else {
                // In use: look again a period later.
                Instant::now() + held.idle_timeout
            };
            held.idle_timer.as_mut().reset(next);
        }
    }
}

impl LocalUpstream {
    /// Sends `req` (origin-form target, head ready) on this client connection's upstream
    /// connection, making one when there is none, and waits for the answer head up to
    /// `response_timeout`. Falls back to the pool when the connection is busy.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let limit = upstream.response_timeout();
        match tokio::time::timeout(limit, self.exchange(upstream, req)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(limit)),
        }
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            let mut out = match self.checkout(upstream) {
                Ok(Some(c)) => c,
                // Boxed, as the pool's road below: both are rare (once per client connection,
                // a busy kept connection) and large (a connect, a TLS handshake, the pool's
                // checkout), and the future of every pass-through request would otherwise be
                // as large as they are (hyper moves it, and keeps a slot of its size per
                // connection).
                Ok(None) => Box::pin(self.connect(upstream)).await?,
                // Busy (a request of this client connection still holds it): the pool.
                Err(()) => return Box::pin(send_by_pool(upstream, req)).await,
            };
            // Until the head arrives, dropping this (the timeout, the client gone) aborts the
            // connection.
            let mut guard = AbortUnanswered {
                local: self,
                serial: Some(out.serial),
            };
            if out.sender.ready().await.is_err() {
                // Closed before anything was written: a fresh connection, once.
                guard.serial = None;
                self.discard(out.serial);
                if out.reused {
                    continue;
                }
                return Err(UpstreamError::Protocol(
                    "the upstream closed a new connection before the request".into(),
                ));
            }
            match out.sender.try_send_request(req).await {
                Ok(resp) => {
                    guard.serial = None;
                    upstream.answered();
                    self.give_back(out);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written (the connection closed first): sent again, on a fresh one.
                    Some(r) if out.reused => {
                        guard.serial = None;
                        self.discard(out.serial);
                        req = r;
                    }
                    _ => return Err(exchange_failed(e.error())),
                },
            }
        }
    }

    /// The held connection's sender, when there is a usable one: `Ok(None)` when there is
    /// none (one that is stale, idle too long or for another upstream is dropped), `Err` when
    /// it is in use.
    fn checkout(&self, upstream: &Upstream) -> Result<Option<Checkout>, ()> {
        let mut slot = self.lock();
        let Some(held) = slot.held.as_mut() else {
            return Ok(None);
        };
        // One clock read for the idle check and the new `last_used`.
        let now = Instant::now();
        let fits = held.upstream_id == upstream.id()
            && now.saturating_duration_since(held.last_used) < held.idle_timeout
            && held.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !fits {
            if held.sender.is_none() && held.upstream_id == upstream.id() {
                return Err(());
            }
            slot.held = None;
            return Ok(None);
        }
        held.last_used = now;
        let serial = held.serial;
        Ok(held.sender.take().map(|sender| Checkout {
            sender,
            serial,
            reused: true,
        }))
    }

    /// Opens a connection, installs it (the driver polls it from now on) and takes its sender.
    async fn connect(&self, upstream: &Upstream) -> Result<Checkout, UpstreamError> {
        let OwnConnection {
            sender,
            conn,
            abort,
        } = upstream.connect_own().await?;
        // Never zero (the lazy timer re-arms itself from it), and never so large that adding
        // it to an instant overflows (a year is "never" for an idle connection).
        let idle_timeout = upstream.pool_idle_timeout().clamp(
            Duration::from_millis(1),
            Duration::from_secs(365 * 24 * 3600),
        );
        let now = Instant::now();
        let list = self.lock().listed_in != Some(upstream.id());
        if list {
            // Outside the slot's lock: the registry takes slot locks when it reclaims.
            let me: Weak<dyn Reclaim> = self.me.clone();
            upstream.idle_registry().register(me);
        }
        let mut slot = self.lock();
        slot.listed_in = Some(upstream.id());
        slot.serial += 1;
        let serial = slot.serial;
        slot.held = Some(Held {
            conn: Box::pin(conn),
            sender: None,
            serial,
            upstream_id: upstream.id(),
            abort,
            last_used: now,
            idle_timeout,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        });
        if let Some(w) = &slot.driver {
            w.wake_by_ref();
        }
        Ok(Checkout {
            sender,
            serial,
            reused: false,
        })
    }

    /// The answer head came: the sender goes back for the next request (the connection takes
    /// it once the answer's body is through).
    fn give_back(&self, out: Checkout) {
        let mut slot = self.lock();
        if let Some(held) = slot.held.as_mut().filter(|h| h.serial == out.serial) {
            held.sender = Some(out.sender);
        }
    }

    /// Drops connection `serial` if it is still held.
    fn discard(&self, serial: u64) {
        let mut slot = self.lock();
        if slot.held.as_ref().is_some_and(|h| h.serial == serial) {
            slot.held = None;
        }
    }
}

/// Sends an origin-form request through the pool, which takes absolute targets.
async fn send_by_pool(
    upstream: &Upstream,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    if req.uri().scheme().is_none() {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        *req.uri_mut() = upstream.uri(pq)?;
    }
    upstream.send(req).await
}

/// Aborts connection `serial` when dropped armed: its request got no head (the response
/// timeout fired, the exchange failed, or the client went away).
struct AbortUnanswered<'a> {
    local: &'a LocalUpstream,
    serial: Option<u64>,
}

impl Drop for AbortUnanswered<'_> {
    fn drop(&mut self) {
        let Some(serial) = self.serial else { return };
        let mut slot = self.local.lock();
        if let Some(held) = slot.held.take_if(|h| h.serial == serial) {
            held.abort();
            // Dropped here: `Capped` closes an aborted socket with a reset.
            drop(held);
        }
    }
}

impl Reclaim for LocalUpstream {
    /// Closes the kept connection if it is idle (see `Held::is_idle`).
    fn reclaim_idle(&self) -> bool {
        let held = {
            let mut slot = self.lock();
            slot.held.take_if(|h| h.is_idle())
        };
        // Dropped outside the lock; its permit goes back with it.
        held.is_some()
    }
}

/// One per client connection; shared by its service and its driver.
pub fn for_connection() -> Arc<LocalUpstream> {
    Arc::new_cyclic(|me| LocalUpstream {
        slot: Mutex::default(),
        me: me.clone(),
    })
}
