//! Process state: the current configuration generation (swapped on reload) and what lives as
//! long as the process (metrics, open tunnels, the drain flag, the audit trail).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::audit::AuditTrail;
use crate::config::Config;
use crate::dm_history::DmHistory;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Everything derived from one configuration. A reload builds a new one and swaps it in;
/// requests already running keep the one they started with.
pub struct Generation {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    /// The intercepted endpoint's state (policy inputs, cache, budgets).
    pub endpoint: Arc<DmHistory>,
    /// The TLS pair of `[server.tls]`, loaded for this generation (new connections use it).
    pub tls: Option<Arc<crate::connection::front::TlsServer>>,
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
    /// The audit trail (`audit.enabled`), opened once at start: a reload never reopens it (a
    /// second writer would fork the chain), so `[audit]` changes take effect on restart.
    pub audit: Option<AuditTrail>,
}

impl AppState {
    /// The current configuration generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }
}
