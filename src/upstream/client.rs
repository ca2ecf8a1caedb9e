//! The one pooled upstream client: a keep-alive pool over the capped connector
//! (`connector.rs`), the response-head timeout, the upstream's heartbeat for `/readyz`, and the
//! classification of what went wrong ([`UpstreamError`]). A request whose answer head never
//! came (a 504, or its client went away) has its connection aborted at once (see
//! `connector.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tower_service::Service;

use super::connector::{abort_handle, Abort, AbortUnanswered, Busy, Capped, CappedConnector};
use super::idle::IdleRegistry;
use super::UpstreamError;
use crate::body::{ClientBodyError, ProxyBody};
use crate::config::UpstreamConfig;

/// The upstream Rocket.Chat server and the pooled client that reaches it.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<CappedConnector>, ProxyBody>,
    /// The pool's connector, for the connections client connections keep (`local.rs`).
    connector: HttpsConnector<CappedConnector>,
    /// Which `Upstream` this is: a connection made for one is never used for another (a
    /// reload that changes the upstream makes a new one).
    id: u64,
    pool_idle_timeout: Duration,
    /// `upstream.max_connections`, for the 503's log line.
    max_connections: u64,
    /// Its permits, one per open upstream connection (shared by the connector).
    permits: Arc<Semaphore>,
    /// The client connections keeping an upstream connection (shared with the connector).
    idle: Arc<IdleRegistry>,
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
        let (permits, idle) = match previous {
            Some(p) if p.max_connections == max_connections => (p.permits.clone(), p.idle.clone()),
            _ => (
                Arc::new(Semaphore::new(
                    max_connections.min(Semaphore::MAX_PERMITS as u64) as usize,
                )),
                Arc::default(),
            ),
        };
        let connector = CappedConnector::new(
            connector,
            permits.clone(),
            cfg.connect_timeout,
            idle.clone(),
        );
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&cfg.ca_file)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        static IDS: AtomicU64 = AtomicU64::new(1);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector.clone());
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
            connector,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            pool_idle_timeout: cfg.pool_idle_timeout,
            max_connections,
            permits,
            idle,
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
                self.answered();
                Ok(resp)
            }
            Ok(Err(e)) if e.is_connect() || caused_by::<Busy>(&e) => Err(self.connect_failed(&e)),
            Ok(Err(e)) => Err(exchange_failed(&e)),
        }
    }

    /// Notes that the upstream just sent a response head (the `/readyz` heartbeat).
    pub(super) fn answered(&self) {
        let ms = epoch().elapsed().as_millis() as u64;
        self.last_answer_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Which upstream this is (see the field).
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Where a client connection that keeps an upstream connection is listed, so that it can
    /// be closed while idle when the cap is reached (`idle.rs`).
    pub(super) fn idle_registry(&self) -> &IdleRegistry {
        &self.idle
    }

    /// `upstream.response_timeout`.
    pub(super) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// `upstream.pool_idle_timeout`.
    pub(super) fn pool_idle_timeout(&self) -> Duration {
        self.pool_idle_timeout
    }

    /// Opens a new HTTP/1.1 connection outside the pool (same connector: the cap, TLS,
    /// `TCP_NODELAY`, the abort), for a client connection to keep (`local.rs`). Its
    /// `Connection` must be polled by the caller.
    pub(super) async fn connect_own(&self) -> Result<OwnConnection, UpstreamError> {
        let target = self.uri("/")?;
        let mut connector = self.connector.clone();
        let io = connector
            .call(target)
            .await
            .map_err(|e| self.connect_failed(&*e))?;
        let abort = abort_handle(&io);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        Ok(OwnConnection {
            sender,
            conn,
            abort,
        })
    }

    /// A connect that failed: all connections busy (503), or refused/unreachable/timed out.
    fn connect_failed(&self, e: &(dyn std::error::Error + 'static)) -> UpstreamError {
        if caused_by::<Busy>(e) {
            UpstreamError::Busy(self.max_connections)
        } else {
            UpstreamError::Connect(error_chain(e))
        }
    }
}

/// An upstream HTTP/1.1 connection opened by [`Upstream::connect_own`].
pub(super) struct OwnConnection {
    pub(super) sender: hyper::client::conn::http1::SendRequest<ProxyBody>,
    pub(super) conn: hyper::client::conn::http1::Connection<MaybeHttpsStream<Capped>, ProxyBody>,
    /// Closes the connection from outside (see `connector.rs`).
    pub(super) abort: Option<Abort>,
}

/// An exchange that failed after the connection was there: the client's body failed (a 400),
/// or the upstream broke it.
pub(super) fn exchange_failed(e: &(dyn std::error::Error + 'static)) -> UpstreamError {
    if caused_by_client_body(e) {
        UpstreamError::ClientBody(error_chain(e))
    } else {
        UpstreamError::Protocol(error_chain(e))
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
