//! Time bounds of one client connection (spec section 7), kept outside hyper because hyper's
//! own `header_read_timeout` starts only once a head has started: a connection that sends
//! nothing, or only blank lines, would hold its `max_connections` slot forever, and HTTP/2 has
//! no idle bound at all.
//!
//! The clock is armed while no request is in flight on the connection:
//! - HTTP/1.x: a whole request head must arrive within `header_read_timeout` of the
//!   connection's start or of the end of the previous response;
//! - HTTP/2: the preface and the first SETTINGS frame must arrive within
//!   `header_read_timeout`; after that, a connection with no open stream for `idle_timeout` is
//!   closed. PINGs, SETTINGS and WINDOW_UPDATE never reach the service, so they are not
//!   activity, by construction.
//!
//! A request is "in flight" from the moment hyper hands its head to the service until its
//! response body has been dropped (sent, or abandoned), so a long download or upload is never
//! cut. Tunnels are not timed at all: they outlive the connection task.
//!
//! Also here: [`ConnSlot`], the `max_connections` slot a connection (and, after a `101`, its
//! tunnel) holds, and the accept back-off shared by both listeners.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::metrics::{GaugeGuard, Metrics};

#[derive(Debug)]
struct State {
    /// Requests whose head the service has and whose response body is still alive.
    in_flight: usize,
    /// The HTTP/2 preface and first SETTINGS frame were seen.
    h2: bool,
    /// When the connection is to be closed, if nothing happens before; `None` while a request
    /// is in flight.
    deadline: Option<Instant>,
}

/// The per-connection clock. Cheap to share (lives in the connection's `ConnFlags`).
#[derive(Debug)]
pub struct ConnClock {
    head: Duration,
    idle: Duration,
    state: Mutex<State>,
}

impl Default for ConnClock {
    /// A clock that never fires (unit tests of the sniffer).
    fn default() -> Self {
        ConnClock {
            head: Duration::MAX,
            idle: Duration::MAX,
            state: Mutex::new(State {
                in_flight: 0,
                h2: false,
                deadline: None,
            }),
        }
    }
}

impl ConnClock {
    /// A clock started now: the first head (or HTTP/2 preface) is due within `head`.
    pub fn new(head: Duration, idle: Duration) -> Self {
        ConnClock {
            head,
            idle,
            state: Mutex::new(State {
                in_flight: 0,
                h2: false,
                deadline: Instant::now().checked_add(head),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request head reached the service: the connection is busy until the returned guard
    /// (carried by the response body) is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.deadline = None;
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            let wait = if s.h2 { self.idle } else { self.head };
            s.deadline = Instant::now().checked_add(wait);
        }
    }

    /// The HTTP/2 preface and first SETTINGS frame are complete: from now on the idle bound
    /// applies.
    pub fn h2_ready(&self) {
        let mut s = self.lock();
        s.h2 = true;
        if s.in_flight == 0 {
            s.deadline = Instant::now().checked_add(self.idle);
        }
    }

    /// Whether this is an HTTP/2 connection past its preface.
    pub fn is_h2(&self) -> bool {
        self.lock().h2
    }

    /// Resolves once the deadline has passed with no request in flight.
    ///
    /// The timer is lazy: requests only write the state, they never touch a timer or wake
    /// anything (a timer per request was measurable on the pass-through road). The one sleep
    /// fires at the deadline it was armed for and is re-armed to the current one when that
    /// moved later; while a request is in flight it looks again every `head` (or `idle`, if
    /// shorter), so a connection is closed at its true deadline, never early.
    pub async fn expired(&self) {
        // While busy, how often to look again (never a spin, whatever the config says).
        let recheck = self.head.min(self.idle).max(Duration::from_millis(10));
        loop {
            let now = Instant::now();
            let next = {
                let s = self.lock();
                if s.in_flight > 0 {
                    now.checked_add(recheck)
                } else {
                    match s.deadline {
                        Some(d) if d <= now => return,
                        // `None` here: bounds too far away to represent, so never.
                        d => d,
                    }
                }
            };
            match next {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Marks one request in flight on its connection until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight (see [`ConnClock`]) until hyper drops
    /// it; everything else is the inner body's.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B> Tracked<B> {
    /// Wraps `inner`, holding `in_flight` for its life.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One `server.max_connections` slot: held by the connection task and, after a `101`, by its
/// tunnel too, so a tunnel keeps the slot for its whole life. The open-connections gauge
/// lives as long.
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    _open: GaugeGuard,
}

impl fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnSlot")
    }
}

impl ConnSlot {
    /// A slot for one accepted client connection.
    pub fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> Arc<Self> {
        Arc::new(ConnSlot {
            _permit: permit,
            _open: metrics.connection_opened(),
        })
    }
}

/// Back-off for failing `accept` calls (out of descriptors, mostly): the wait doubles from
/// 10 ms up to 1 s, and a burst of failures is logged once when it starts and once when accept
/// works again, never once per failure.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    failures: u64,
    delay: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// Back-off state for the listener called `listener` in the logs.
    pub fn new(listener: &'static str) -> Self {
        AcceptBackoff {
            listener,
            failures: 0,
            delay: BACKOFF_MIN,
        }
    }

    /// Counts a failed accept and returns how long to wait before the next one.
    pub fn failed(&mut self, e: &io::Error, metrics: &Metrics) -> Duration {
        metrics.accept_failed();
        if self.failures == 0 {
            tracing::warn!(
                listener = self.listener,
                error = %e,
                "accept failed; backing off until it works again"
            );
        }
        self.failures += 1;
        let wait = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        wait
    }

    /// An accept worked: ends a burst of failures, if there was one.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                listener = self.listener,
                failures = self.failures,
                "accept works again"
            );
            self.failures = 0;
            self.delay = BACKOFF_MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_only_with_nothing_in_flight() {
        let head = Duration::from_millis(100);
        let idle = Duration::from_millis(300);
        let clock = Arc::new(ConnClock::new(head, idle));
        let busy = clock.request_started();
        // Busy: nothing fires, well past both bounds.
        assert!(
            tokio::time::timeout(Duration::from_millis(600), clock.expired())
                .await
                .is_err()
        );
        drop(busy);
        let t = Instant::now();
        clock.expired().await;
        assert!(t.elapsed() >= head);
        // HTTP/2 past its preface: the idle bound, from then.
        clock.h2_ready();
        let t = Instant::now();
        clock.expired().await;
        assert!(t.elapsed() >= idle);
    }
}
