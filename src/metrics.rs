//! Process metrics, kept in lock-free counters on the hot path and rendered in the
//! Prometheus text format (version 0.0.4) by the admin listener's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Route classes, as labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Passthrough = 0,
    Websocket = 1,
    Intercepted = 2,
    Guarded = 3,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Passthrough,
        RouteClass::Websocket,
        RouteClass::Intercepted,
        RouteClass::Guarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Passthrough => "passthrough",
            RouteClass::Websocket => "websocket",
            RouteClass::Intercepted => "intercepted",
            RouteClass::Guarded => "guarded",
        }
    }
}

const STATUS_MIN: usize = 100;
const STATUS_SPAN: usize = 500;
/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const UPSTREAM_ERROR_KINDS: [&str; 5] = ["connect", "timeout", "protocol", "reset", "request"];

struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Named counters. Each is a plain monotonic counter unless its name says otherwise.
#[derive(Default)]
pub struct Counters {
    pub identity_cache_hits: AtomicU64,
    pub identity_upstream_calls: AtomicU64,
    pub identity_failures: AtomicU64,
    pub permission_upstream_calls: AtomicU64,
    pub permission_failures: AtomicU64,
    pub setting_upstream_calls: AtomicU64,
    pub setting_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_coalesced: AtomicU64,
    pub cache_stores: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub ratelimit_rejected_ip: AtomicU64,
    pub ratelimit_rejected_user: AtomicU64,
    pub ratelimit_redis_calls: AtomicU64,
    pub ratelimit_redis_errors: AtomicU64,
    pub ratelimit_redis_fallbacks: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub tunnel_bytes_up: AtomicU64,
    pub tunnel_bytes_down: AtomicU64,
    pub connections_total: AtomicU64,
}

struct Inner {
    requests: Vec<AtomicU64>,
    latency: Vec<Histogram>,
    upstream_errors: [AtomicU64; UPSTREAM_ERROR_KINDS.len()],
    open_connections: AtomicI64,
    open_tunnels: AtomicI64,
    /// Failed `accept` calls on either listener (out of descriptors, mostly).
    accept_errors: AtomicU64,
    redis_latency: Histogram,
    counters: Counters,
    /// Gauges read at render time from their owners (cache size, rate-limit keys, ...).
    gauges: std::sync::Mutex<Vec<(&'static str, &'static str, GaugeFn)>>,
    front_door: FrontDoor,
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// Cheap to clone: all clones share one set of counters.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard(Metrics, fn(&Inner) -> &AtomicI64);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0 .0).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics(Arc::new(Inner {
            requests: (0..RouteClass::ALL.len() * STATUS_SPAN)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: (0..RouteClass::ALL.len())
                .map(|_| Histogram::new())
                .collect(),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
            accept_errors: AtomicU64::new(0),
            redis_latency: Histogram::new(),
            counters: Counters::default(),
            gauges: std::sync::Mutex::new(Vec::new()),
            front_door: FrontDoor::default(),
        }))
    }

    /// The named counters.
    pub fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// Counts one finished request.
    pub fn request(&self, class: RouteClass, status: u16, elapsed: Duration) {
        let s = (status as usize).clamp(STATUS_MIN, STATUS_MIN + STATUS_SPAN - 1) - STATUS_MIN;
        self.0.requests[class as usize * STATUS_SPAN + s].fetch_add(1, Ordering::Relaxed);
        self.0.latency[class as usize].observe(elapsed);
    }

    /// Times one Redis rate-limit call.
    pub fn observe_redis(&self, d: Duration) {
        self.0.redis_latency.observe(d);
    }

    /// Counts an upstream failure by kind (`connect`, `timeout`, `protocol`, `reset`, `request`).
    pub fn upstream_error(&self, kind: &str) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.0.upstream_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many upstream failures of `kind` were counted.
    pub fn upstream_errors(&self, kind: &str) -> u64 {
        UPSTREAM_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .map(|i| self.0.upstream_errors[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Marks a client connection open until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.0.open_connections.fetch_add(1, Ordering::Relaxed);
        self.0
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.clone(), |i| &i.open_connections)
    }

    /// Marks a tunnel open until the guard drops.
    pub fn tunnel_opened(&self) -> GaugeGuard {
        self.0.open_tunnels.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.clone(), |i| &i.open_tunnels)
    }

    /// Counts a failed `accept`.
    pub fn accept_failed(&self) {
        self.0.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Open tunnels right now.
    pub fn open_tunnels(&self) -> i64 {
        self.0.open_tunnels.load(Ordering::Relaxed)
    }

    /// Adds the bytes a closed tunnel carried.
    pub fn tunnel_bytes(&self, up: u64, down: u64) {
        let c = &self.0.counters;
        c.tunnel_bytes_up.fetch_add(up, Ordering::Relaxed);
        c.tunnel_bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Registers a gauge read at render time. `name` is the full metric name.
    pub fn register_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        if let Ok(mut g) = self.0.gauges.lock() {
            g.retain(|(n, _, _)| *n != name);
            g.push((name, help, Box::new(f)));
        }
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let i = &self.0;
        out.push_str(
            "# HELP rcshim_build_info Build information.\n# TYPE rcshim_build_info gauge\n",
        );
        let _ = writeln!(
            out,
            "rcshim_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# HELP rcshim_requests_total Requests answered, by route class and status.\n# TYPE rcshim_requests_total counter\n");
        for class in RouteClass::ALL {
            for s in 0..STATUS_SPAN {
                let n = i.requests[class as usize * STATUS_SPAN + s].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "rcshim_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        class.as_str(),
                        s + STATUS_MIN
                    );
                }
            }
        }
        out.push_str("# HELP rcshim_request_duration_seconds Time to the response head, by route class.\n# TYPE rcshim_request_duration_seconds histogram\n");
        for class in RouteClass::ALL {
            i.latency[class as usize].render(
                &mut out,
                "rcshim_request_duration_seconds",
                &format!("route=\"{}\"", class.as_str()),
            );
        }
        out.push_str("# HELP rcshim_ratelimit_redis_duration_seconds Redis rate-limit call latency.\n# TYPE rcshim_ratelimit_redis_duration_seconds histogram\n");
        i.redis_latency.render(
            &mut out,
            "rcshim_ratelimit_redis_duration_seconds",
            "backend=\"redis\"",
        );
        out.push_str("# HELP rcshim_upstream_errors_total Upstream failures, by kind.\n# TYPE rcshim_upstream_errors_total counter\n");
        for (k, kind) in UPSTREAM_ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "rcshim_upstream_errors_total{{kind=\"{kind}\"}} {}",
                i.upstream_errors[k].load(Ordering::Relaxed)
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "rcshim_open_connections",
            "Client connections open now (each holds a max_connections slot; websocket tunnels included).",
            i.open_connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rcshim_open_tunnels",
            "Upgrade tunnels (websockets) open now.",
            i.open_tunnels.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP rcshim_accept_errors_total Failed accepts on either listener (out of file descriptors, mostly).\n# TYPE rcshim_accept_errors_total counter\nrcshim_accept_errors_total {}",
            i.accept_errors.load(Ordering::Relaxed)
        );
        let c = &i.counters;
        let counters: [(&str, &str, &AtomicU64); 22] = [
            (
                "rcshim_connections_total",
                "Client connections accepted.",
                &c.connections_total,
            ),
            (
                "rcshim_tunnel_bytes_up_total",
                "Bytes carried client to upstream by closed tunnels.",
                &c.tunnel_bytes_up,
            ),
            (
                "rcshim_tunnel_bytes_down_total",
                "Bytes carried upstream to client by closed tunnels.",
                &c.tunnel_bytes_down,
            ),
            (
                "rcshim_identity_cache_hits_total",
                "Credentials resolved from the identity cache.",
                &c.identity_cache_hits,
            ),
            (
                "rcshim_identity_upstream_calls_total",
                "Calls to the upstream's /api/v1/me.",
                &c.identity_upstream_calls,
            ),
            (
                "rcshim_identity_failures_total",
                "Identity lookups that failed (upstream down or broken).",
                &c.identity_failures,
            ),
            (
                "rcshim_permission_upstream_calls_total",
                "Calls to the upstream's permissions.listAll.",
                &c.permission_upstream_calls,
            ),
            (
                "rcshim_permission_failures_total",
                "permissions.listAll calls that failed.",
                &c.permission_failures,
            ),
            (
                "rcshim_setting_upstream_calls_total",
                "Calls to read the endpoint setting upstream.",
                &c.setting_upstream_calls,
            ),
            (
                "rcshim_setting_failures_total",
                "Setting reads that failed.",
                &c.setting_failures,
            ),
            (
                "rcshim_cache_hits_total",
                "Endpoint answers served from the cache.",
                &c.cache_hits,
            ),
            (
                "rcshim_cache_misses_total",
                "Endpoint requests that went upstream.",
                &c.cache_misses,
            ),
            (
                "rcshim_cache_coalesced_total",
                "Requests that waited for another's identical upstream fetch.",
                &c.cache_coalesced,
            ),
            (
                "rcshim_cache_stores_total",
                "Answers stored in the cache.",
                &c.cache_stores,
            ),
            (
                "rcshim_cache_evictions_total",
                "Cache entries evicted for size or expired.",
                &c.cache_evictions,
            ),
            (
                "rcshim_ratelimit_rejected_ip_total",
                "429s from the per-IP budget.",
                &c.ratelimit_rejected_ip,
            ),
            (
                "rcshim_ratelimit_rejected_user_total",
                "429s from the per-user budget.",
                &c.ratelimit_rejected_user,
            ),
            (
                "rcshim_ratelimit_redis_calls_total",
                "Rate-limit decisions asked of Redis.",
                &c.ratelimit_redis_calls,
            ),
            (
                "rcshim_ratelimit_redis_errors_total",
                "Redis calls that failed or timed out.",
                &c.ratelimit_redis_errors,
            ),
            (
                "rcshim_ratelimit_redis_fallbacks_total",
                "Decisions made locally because Redis failed.",
                &c.ratelimit_redis_fallbacks,
            ),
            (
                "rcshim_config_reloads_ok_total",
                "Successful config reloads.",
                &c.reloads_ok,
            ),
            (
                "rcshim_config_reloads_failed_total",
                "Config reloads refused (the old config stayed).",
                &c.reloads_failed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        i.front_door.render(&mut out);
        if let Ok(g) = i.gauges.lock() {
            for (name, help, f) in g.iter() {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                    f()
                );
            }
        }
        out
    }
}

/// The front door's counters (spec section 10): TLS handshakes, the served certificate's
/// expiry, PROXY protocol headers.
#[derive(Default)]
pub struct FrontDoor {
    /// TLS handshakes completed.
    pub tls_handshakes_ok: AtomicU64,
    /// TLS handshakes that failed or did not finish within `header_read_timeout`.
    pub tls_handshakes_failed: AtomicU64,
    /// PROXY protocol headers accepted (LOCAL included).
    pub proxy_accepted: AtomicU64,
    /// Connections closed for a missing, malformed or untrusted PROXY header.
    pub proxy_refused: AtomicU64,
    /// The served certificate's `notAfter` (Unix seconds); 0 without TLS.
    pub cert_not_after: AtomicI64,
}

impl FrontDoor {
    fn render(&self, out: &mut String) {
        let ok = self.tls_handshakes_ok.load(Ordering::Relaxed);
        let failed = self.tls_handshakes_failed.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP rcshim_tls_handshakes_total TLS handshakes on the client listener, by outcome (failed: refused, broken or not finished within header_read_timeout).\n# TYPE rcshim_tls_handshakes_total counter\nrcshim_tls_handshakes_total{{outcome=\"ok\"}} {ok}\nrcshim_tls_handshakes_total{{outcome=\"failed\"}} {failed}"
        );
        let accepted = self.proxy_accepted.load(Ordering::Relaxed);
        let refused = self.proxy_refused.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP rcshim_proxy_protocol_headers_total PROXY protocol headers, by outcome (refused: missing, malformed, late or from an untrusted peer; the connection was closed).\n# TYPE rcshim_proxy_protocol_headers_total counter\nrcshim_proxy_protocol_headers_total{{outcome=\"accepted\"}} {accepted}\nrcshim_proxy_protocol_headers_total{{outcome=\"refused\"}} {refused}"
        );
        let not_after = self.cert_not_after.load(Ordering::Relaxed);
        if not_after != 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "# HELP rcshim_tls_certificate_expiry_seconds Seconds until the served certificate's notAfter (negative once expired).\n# TYPE rcshim_tls_certificate_expiry_seconds gauge\nrcshim_tls_certificate_expiry_seconds {}",
                not_after - now
            );
        }
    }
}

impl Metrics {
    /// The front door's counters.
    pub fn front_door(&self) -> &FrontDoor {
        &self.0.front_door
    }
}
