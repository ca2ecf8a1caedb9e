//! The one pooled upstream client, with the connect and response-head timeouts and the
//! mapping of its failures to the shim's 502 and 504 answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{ClientBodyError, ProxyBody};
use crate::config::UpstreamConfig;

/// Why the upstream gave no usable answer head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable, or not connected within `connect_timeout`.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// No response head within `response_timeout`.
    #[error("the upstream sent no response head within {0:?}")]
    Timeout(Duration),
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
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Request(_) => "request",
            UpstreamError::ClientBody(_) => "client_body",
        }
    }
}

/// The upstream Rocket.Chat server and the pooled client that reaches it.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
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
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => {
                let ms = epoch().elapsed().as_millis() as u64;
                self.last_answer_ms.store(ms.max(1), Ordering::Relaxed);
                Ok(resp)
            }
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
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<ClientBodyError>() {
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
