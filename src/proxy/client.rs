//! The one pooled upstream client, with the connect and response-head timeouts and the
//! mapping of its failures to the shim's 502, 503 and 504 answers.
//!
//! Two bounds live here (spec/shim.md §7). Every upstream connection holds one permit of
//! `upstream.max_connections` for its whole life (pooled, busy, or carrying a tunnel), so
//! however many HTTP/2 streams clients open, the process holds at most that many; a request
//! that finds none free waits up to `connect_timeout`, then gets a 503. And a request whose
//! answer head never came (a 504, or its client went away) closes its upstream connection at
//! once, even when the request body is still blocked toward an upstream that does not read:
//! the connection's I/O is aborted, which ends hyper's connection task, frees the socket, the
//! permit, and the client's body (hence the client connection) with it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::body::{ClientBodyError, ProxyBody};
use crate::config::UpstreamConfig;
use crate::read_cap::ReadCap;

/// Why the upstream gave no usable answer head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable, or not connected within `connect_timeout`.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// No response head within `response_timeout`.
    #[error("the upstream sent no response head within {0:?}")]
    Timeout(Duration),
    /// All `upstream.max_connections` connections stayed busy for `connect_timeout`.
    #[error("all {0} upstream connections stayed busy")]
    Busy(u64),
    /// The connection broke or the upstream did not speak HTTP.
    #[error("the upstream broke the exchange: {0}")]
    Protocol(String),
    /// The shim could not build the upstream request (a bug or a bad target).
    #[error("cannot build the upstream request: {0}")]
    Request(String),
    /// The client's own request body failed while it was streamed upstream (bad chunked
    /// framing, or the client went away): a 400, and no upstream error.
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
}

impl UpstreamError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Busy(_) => "busy",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Request(_) => "request",
            UpstreamError::ClientBody(_) => "client_body",
        }
    }
}

/// The upstream Rocket.Chat server and the pooled client that reaches it.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<CappedConnector>, ProxyBody>,
    /// `upstream.max_connections`, for the 503's log line.
    max_connections: u64,
    /// Its permits, one per open upstream connection (shared by the connector).
    permits: Arc<Semaphore>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    response_timeout: Duration,
    /// `upstream.path_prefix`, "" or like "/chat".
    pub path_prefix: String,
    /// When this upstream last sent a response head (milliseconds since [`epoch`], 0 = never).
    last_answer_ms: Arc<AtomicU64>,
}

/// The process-wide reference instant for upstream heartbeats.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Upstream {
    /// Builds the client: keep-alive pool whose idle connections close after
    /// `pool_idle_timeout` (below Node's 5 s keep-alive, so the shim never reuses a connection
    /// the upstream is about to close), `TCP_NODELAY`, `connect_timeout`.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, String> {
        Self::new_after(cfg, None)
    }

    /// As [`Upstream::new`], for a reload: when `previous` has the same `max_connections`, its
    /// permits are shared, so the connections it still holds (tunnels, requests in flight,
    /// idle ones until `pool_idle_timeout`) count against the one process-wide cap.
    pub fn new_after(
        cfg: &UpstreamConfig,
        previous: Option<&Upstream>,
    ) -> Result<Upstream, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let max_connections = cfg.max_connections;
        let permits = match previous {
            Some(p) if p.max_connections == max_connections => p.permits.clone(),
            _ => Arc::new(Semaphore::new(
                max_connections.min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
        };
        let connector = CappedConnector {
            inner: connector,
            permits: permits.clone(),
            wait: cfg.connect_timeout,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&cfg.ca_file)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        let authority = cfg
            .url
            .authority
            .parse()
            .map_err(|e| format!("upstream.url: {e}"))?;
        let scheme = match cfg.url.scheme {
            crate::config::Scheme::Http => http::uri::Scheme::HTTP,
            crate::config::Scheme::Https => http::uri::Scheme::HTTPS,
        };
        Ok(Upstream {
            client,
            max_connections,
            permits,
            scheme,
            authority,
            response_timeout: cfg.response_timeout,
            path_prefix: cfg.path_prefix.clone(),
            last_answer_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The absolute upstream URI for a path-and-query (which must start with `/`).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError::Request(e.to_string()))
    }

    /// The upstream's `host:port`, used as `Host` when the client sent none.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// How long ago the upstream last answered anything, if it ever did.
    pub fn last_answer_age(&self) -> Option<Duration> {
        match self.last_answer_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(epoch().elapsed().saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// Forgets the last answer (the next `/readyz` probes the upstream).
    pub fn forget_last_answer(&self) {
        self.last_answer_ms.store(0, Ordering::Relaxed);
    }

    /// Sends `req` and waits for the response head, up to `response_timeout`
    /// (`timeout = false` for upgrade requests is not needed: the head of a 101 arrives
    /// promptly and the tunnel after it has no total timeout).
    ///
    /// When no head comes (the timeout, an error, or this future dropped because the client
    /// went away), the connection the request was on is aborted at once (see the module doc).
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut guard = AbortUnanswered(Some(capture_connection(&mut req)));
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => {
                guard.0 = None;
                let ms = epoch().elapsed().as_millis() as u64;
                self.last_answer_ms.store(ms.max(1), Ordering::Relaxed);
                Ok(resp)
            }
            Ok(Err(e)) if caused_by::<Busy>(&e) => Err(UpstreamError::Busy(self.max_connections)),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) if caused_by_client_body(&e) => {
                Err(UpstreamError::ClientBody(error_chain(&e)))
            }
            Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
        }
    }
}

/// Whether the request failed because the client's body did (see [`ClientBodyError`]).
fn caused_by_client_body(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<ClientBodyError>(e)
}

/// Whether `E` is somewhere in the chain of `e`.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<E>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The connector's error when every permit stayed taken for `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("every upstream connection is busy")]
struct Busy;

/// Aborts the connection a request went out on, when dropped before it is disarmed (set to
/// `None` once the answer head arrived). Dropped armed: the response timeout fired, the
/// request failed, or the handler's future was dropped because the client went away.
struct AbortUnanswered(Option<CaptureConnection>);

impl Drop for AbortUnanswered {
    fn drop(&mut self) {
        let Some(capture) = self.0.take() else { return };
        let meta = capture.connection_metadata();
        if let Some(connected) = meta.as_ref() {
            // A connection that never answered this request must not serve another either.
            connected.poison();
            let mut ext = http::Extensions::new();
            connected.get_extras(&mut ext);
            if let Some(abort) = ext.get::<AbortHandle>() {
                abort.0.cancel();
            }
        }
    }
}

/// Closes one upstream connection from outside its task (see [`Capped`]).
#[derive(Clone)]
struct AbortHandle(CancellationToken);

/// Wraps the TCP connector (under TLS, so the cap and the abort hold for `https` too): each
/// connection first takes a permit of the process-wide cap, waiting at most `wait`
/// (`connect_timeout`) for one, and keeps it until it closes.
#[derive(Clone)]
pub struct CappedConnector {
    inner: HttpConnector,
    permits: Arc<Semaphore>,
    wait: Duration,
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
        let wait = self.wait;
        Box::pin(async move {
            let permit = match tokio::time::timeout(wait, permits.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(Box::new(Busy) as Self::Error),
            };
            let io = inner
                .call(uri)
                .await
                .map_err(|e| Box::new(e) as Self::Error)?;
            let io = TokioIo::new(ReadCap::new(io.into_inner()));
            let abort = CancellationToken::new();
            Ok(Capped {
                io,
                _permit: permit,
                aborted: Box::pin(abort.clone().cancelled_owned()),
                abort,
            })
        })
    }
}

/// An upstream connection holding its permit, which an [`AbortHandle`] can close: once
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
    abort: CancellationToken,
    aborted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Capped {
    /// `Err` once aborted (the task's waker is registered for the abort either way).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.aborted.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let _ = self.io.inner().get_ref().set_zero_linger();
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the request on this upstream connection was abandoned",
                ))
            }
            Poll::Pending => Ok(()),
        }
    }
}

impl Read for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl Write for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
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
            .extra(AbortHandle(self.abort.clone()))
    }
}

/// TLS for an `https` upstream: the built-in web roots plus the certificates of `ca_file`.
fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("upstream.ca_file: cannot read \"{ca_file}\": {e}"))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("upstream.ca_file: \"{ca_file}\": {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_file: \"{ca_file}\": {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "upstream.ca_file: \"{ca_file}\" holds no PEM certificate"
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error with its sources, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
