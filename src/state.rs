//! Shared state: what every request reads (the current configuration generation, metrics)
//! and the per-request context.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dm_history::DmHistory;
use crate::metrics::Metrics;
use crate::proxy::Upstream;

/// Everything derived from one configuration. A reload builds a new one and swaps it in;
/// requests already running keep the one they started with.
pub struct Generation {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    pub dm: Arc<DmHistory>,
    /// The TLS pair of `[server.tls]`, loaded for this generation (new connections use it).
    pub tls: Option<Arc<crate::server::front::TlsServer>>,
}

/// Process-wide state.
pub struct AppState {
    pub current: ArcSwap<Generation>,
    pub metrics: Metrics,
    /// Open upgrade tunnels, so a drain can wait for them.
    pub tunnels: TaskTracker,
    /// Set when a drain starts: `/readyz` answers 503.
    pub draining: AtomicBool,
    pub started: Instant,
}

impl AppState {
    /// The current configuration generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }
}

/// What the handler knows about one request before routing it.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub peer: SocketAddr,
    /// The client's address by the `trusted_proxies` rule.
    pub client_ip: IpAddr,
    pub peer_trusted: bool,
    pub request_id: HeaderValue,
    /// The client connection came through TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

/// Facts for the access log that only the endpoint pipeline knows, carried in the response's
/// extensions.
#[derive(Debug, Clone, Default)]
pub struct LogFacts {
    pub user_id: Option<String>,
    pub cache: Option<&'static str>,
}
