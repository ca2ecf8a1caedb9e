//! Process metrics, kept in lock-free atomics on the hot path and rendered by
//! `prometheus-client`'s Prometheus text encoder (format version 0.0.4, the content type the
//! admin listener's `/metrics` has always sent).
//!
//! The names, types, help texts and label sets are a contract (acceptance tests and
//! dashboards read them): `tests/metrics_names.rs` compares them with a golden list.
//!
//! # Adding a metric
//! Every family is registered in one place, [`Metrics::new`], in the order `/metrics` lists
//! them. Two rules of the crate to keep in mind there: a counter is registered *without* its
//! `_total` (the encoder appends it), and a help text *without* its final full stop (the
//! registry appends it).
//! - A plain counter: a [`Count`] field in [`Counters`] and a row in `Counters::table`.
//!   Callers bump it with `metrics.counters().name.fetch_add(1, Relaxed)`.
//! - A gauge the metrics own (up and down on the hot path): a `Gauge` in `Inner`, registered
//!   in [`Metrics::new`], with a method returning a [`GaugeGuard`] or setting it.
//! - A gauge read from its owner at scrape time: [`Metrics::register_gauge`], at run time.
//! - A histogram: an `AtomicHistogram` in `Inner`, registered through `Labelled` when it
//!   carries a label; `OnlyWhen` lists a family only while a flag says it applies.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

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
const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "connect", "timeout", "protocol", "reset", "request",
    // Every `upstream.max_connections` connection stayed busy for `connect_timeout` (503).
    "busy",
];

/// A histogram over [`BUCKETS`] in plain atomics. `prometheus-client`'s own `Histogram`
/// takes a mutex on every `observe`; this one is observed on every request by every worker,
/// so it stays lock-free and hands its figures to the crate's encoder.
#[derive(Debug, Clone)]
struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Per bucket, not cumulative (the encoder adds them up); above the last bound: none.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    fn new() -> Self {
        AtomicHistogram(Arc::new(HistogramCells {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }))
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let buckets: [(f64, u64); BUCKETS.len()] =
            std::array::from_fn(|i| (BUCKETS[i], self.0.buckets[i].load(Ordering::Relaxed)));
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let count = self.0.count.load(Ordering::Relaxed);
        // The encoder adds the `+Inf` bucket (= count) since no bound here is infinite.
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One family with one label whose values are fixed at start: each child is created once and
/// kept (cloned, sharing its atomics) where the hot path reaches it by index, so counting takes
/// no map lookup and no lock (`prometheus-client`'s `Family` would do both), and the children
/// are listed in this order, zeros included.
#[derive(Debug, Clone)]
struct Labelled<M> {
    label: &'static str,
    children: Vec<(&'static str, M)>,
}

impl<M: TypedMetric> TypedMetric for Labelled<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Labelled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (value, child) in &self.children {
            child.encode(encoder.encode_family(&[(self.label, *value)])?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A family listed only while `on` is set (no `# HELP`/`# TYPE` either): the Redis histogram
/// exists only when the rate limits run on Redis.
#[derive(Debug, Clone)]
struct OnlyWhen<M> {
    on: Arc<AtomicBool>,
    metric: M,
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for OnlyWhen<M> {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        self.metric.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        !self.on.load(Ordering::Relaxed)
    }
}

/// Requests by route class and status: one atomic per (class, status 100..=599), made once;
/// only the pairs seen at least once are listed (as before the move to `prometheus-client`).
#[derive(Debug, Clone)]
struct RequestCounts(Arc<[AtomicU64]>);

impl RequestCounts {
    fn new() -> Self {
        RequestCounts(
            (0..RouteClass::ALL.len() * STATUS_SPAN)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    fn count(&self, class: RouteClass, status: u16) {
        let s = (status as usize).clamp(STATUS_MIN, STATUS_MIN + STATUS_SPAN - 1) - STATUS_MIN;
        self.0[class as usize * STATUS_SPAN + s].fetch_add(1, Ordering::Relaxed);
    }
}

impl EncodeMetric for RequestCounts {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for class in RouteClass::ALL {
            for s in 0..STATUS_SPAN {
                let n = self.0[class as usize * STATUS_SPAN + s].load(Ordering::Relaxed);
                if n > 0 {
                    // `s` < STATUS_SPAN, so the status always fits a u16.
                    let status = (s + STATUS_MIN) as u16;
                    let labels = ([("route", class.as_str())], [("status", status)]);
                    encoder
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// One counter of [`Counters`]: a `prometheus-client` counter that derefs to its atomic, so
/// callers keep writing `fetch_add(1, Relaxed)` and `load(Relaxed)`.
#[derive(Debug, Clone, Default)]
pub struct Count(Counter);

impl Deref for Count {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// Named counters. Each is a plain monotonic counter unless its name says otherwise.
#[derive(Default)]
pub struct Counters {
    pub identity_cache_hits: Count,
    pub identity_upstream_calls: Count,
    pub identity_failures: Count,
    pub permission_upstream_calls: Count,
    pub permission_failures: Count,
    pub setting_upstream_calls: Count,
    pub setting_failures: Count,
    pub cache_hits: Count,
    pub cache_misses: Count,
    pub cache_coalesced: Count,
    pub cache_stores: Count,
    pub cache_evictions: Count,
    pub ratelimit_rejected_ip: Count,
    pub ratelimit_rejected_user: Count,
    pub ratelimit_redis_calls: Count,
    pub ratelimit_redis_errors: Count,
    pub ratelimit_redis_fallbacks: Count,
    pub reloads_ok: Count,
    pub reloads_failed: Count,
    pub tunnel_bytes_up: Count,
    pub tunnel_bytes_down: Count,
    pub connections_total: Count,
}

impl Counters {
    /// Name (without `_total`), help (without the final full stop) and counter, in the order
    /// `/metrics` lists them.
    fn table(&self) -> [(&'static str, &'static str, &Count); 22] {
        [
            (
                "rcshim_connections",
                "Client connections accepted",
                &self.connections_total,
            ),
            (
                "rcshim_tunnel_bytes_up",
                "Bytes carried client to upstream by closed tunnels",
                &self.tunnel_bytes_up,
            ),
            (
                "rcshim_tunnel_bytes_down",
                "Bytes carried upstream to client by closed tunnels",
                &self.tunnel_bytes_down,
            ),
            (
                "rcshim_identity_cache_hits",
                "Credentials resolved from the identity cache",
                &self.identity_cache_hits,
            ),
            (
                "rcshim_identity_upstream_calls",
                "Calls to the upstream's /api/v1/me",
                &self.identity_upstream_calls,
            ),
            (
                "rcshim_identity_failures",
                "Identity lookups that failed (upstream down or broken)",
                &self.identity_failures,
            ),
            (
                "rcshim_permission_upstream_calls",
                "Calls to the upstream's permissions.listAll",
                &self.permission_upstream_calls,
            ),
            (
                "rcshim_permission_failures",
                "permissions.listAll calls that failed",
                &self.permission_failures,
            ),
            (
                "rcshim_setting_upstream_calls",
                "Calls to read the endpoint setting upstream",
                &self.setting_upstream_calls,
            ),
            (
                "rcshim_setting_failures",
                "Setting reads that failed",
                &self.setting_failures,
            ),
            (
                "rcshim_cache_hits",
                "Endpoint answers served from the cache",
                &self.cache_hits,
            ),
            (
                "rcshim_cache_misses",
                "Endpoint requests that went upstream",
                &self.cache_misses,
            ),
            (
                "rcshim_cache_coalesced",
                "Requests that waited for another's identical upstream fetch",
                &self.cache_coalesced,
            ),
            (
                "rcshim_cache_stores",
                "Answers stored in the cache",
                &self.cache_stores,
            ),
            (
                "rcshim_cache_evictions",
                "Cache entries evicted for size or expired",
                &self.cache_evictions,
            ),
            (
                "rcshim_ratelimit_rejected_ip",
                "429s from the per-IP budget",
                &self.ratelimit_rejected_ip,
            ),
            (
                "rcshim_ratelimit_rejected_user",
                "429s from the per-user budget",
                &self.ratelimit_rejected_user,
            ),
            (
                "rcshim_ratelimit_redis_calls",
                "Rate-limit decisions asked of Redis",
                &self.ratelimit_redis_calls,
            ),
            (
                "rcshim_ratelimit_redis_errors",
                "Redis calls that failed or timed out",
                &self.ratelimit_redis_errors,
            ),
            (
                "rcshim_ratelimit_redis_fallbacks",
                "Decisions made locally because Redis failed",
                &self.ratelimit_redis_fallbacks,
            ),
            (
                "rcshim_config_reloads_ok",
                "Successful config reloads",
                &self.reloads_ok,
            ),
            (
                "rcshim_config_reloads_failed",
                "Config reloads refused (the old config stayed)",
                &self.reloads_failed,
            ),
        ]
    }
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;
/// Full name, full help text (full stop included), reader.
type ReadGauge = (&'static str, &'static str, GaugeFn);

/// Gauges read at scrape time from their owners (cache size, rate-limit keys, ...), which
/// come and go with config reloads; listed after every other family.
#[derive(Clone, Default)]
struct ReadGauges(Arc<Mutex<Vec<ReadGauge>>>);

impl fmt::Debug for ReadGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadGauges")
    }
}

impl Collector for ReadGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Ok(gauges) = self.0.lock() else {
            return Ok(());
        };
        for (name, help, read) in gauges.iter() {
            // Help as given: only `Registry::register` appends the full stop.
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let v = read();
            // Counts are whole: rendered `12`, as before, not the float encoder's `12.0`.
            if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                ConstGauge::new(v as i64).encode(metric)?;
            } else {
                ConstGauge::new(v).encode(metric)?;
            }
        }
        Ok(())
    }
}

struct Inner {
    requests: RequestCounts,
    /// One per [`RouteClass`], by its index.
    latency: [AtomicHistogram; RouteClass::ALL.len()],
    /// One per [`UPSTREAM_ERROR_KINDS`], by its index.
    upstream_errors: [Counter; UPSTREAM_ERROR_KINDS.len()],
    open_connections: Gauge,
    open_tunnels: Gauge,
    /// Failed `accept` calls on either listener (out of descriptors, mostly).
    accept_errors: Counter,
    redis_latency: AtomicHistogram,
    /// Whether the rate limits run on Redis: only then is the Redis histogram listed.
    redis_backend: Arc<AtomicBool>,
    counters: Counters,
    gauges: ReadGauges,
    front_door: FrontDoor,
    /// Holds clones of everything above (sharing their atomics), for rendering.
    registry: Registry,
}

/// Cheap to clone: all clones share one set of counters.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Makes every metric and registers every family: the one place a new one is added.
    pub fn new() -> Self {
        let requests = RequestCounts::new();
        let latency: [AtomicHistogram; RouteClass::ALL.len()] =
            std::array::from_fn(|_| AtomicHistogram::new());
        let upstream_errors: [Counter; UPSTREAM_ERROR_KINDS.len()] = Default::default();
        let open_connections = Gauge::default();
        let open_tunnels = Gauge::default();
        let accept_errors = Counter::default();
        let redis_latency = AtomicHistogram::new();
        let redis_backend = Arc::new(AtomicBool::new(false));
        let counters = Counters::default();
        let gauges = ReadGauges::default();
        let front_door = FrontDoor::default();

        let mut r = Registry::default();
        // An `Info` renders as `<name>_info{...} 1` with type gauge: `rcshim_build_info`.
        r.register(
            "rcshim_build",
            "Build information",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "rcshim_requests",
            "Requests answered, by route class and status",
            requests.clone(),
        );
        r.register(
            "rcshim_request_duration_seconds",
            "Time to the response head, by route class",
            Labelled {
                label: "route",
                children: RouteClass::ALL
                    .iter()
                    .map(|c| (c.as_str(), latency[*c as usize].clone()))
                    .collect(),
            },
        );
        r.register(
            "rcshim_ratelimit_redis_duration_seconds",
            "Redis rate-limit call latency",
            OnlyWhen {
                on: redis_backend.clone(),
                metric: Labelled {
                    label: "backend",
                    children: vec![("redis", redis_latency.clone())],
                },
            },
        );
        r.register(
            "rcshim_upstream_errors",
            "Upstream failures, by kind",
            Labelled {
                label: "kind",
                children: UPSTREAM_ERROR_KINDS
                    .iter()
                    .zip(&upstream_errors)
                    .map(|(k, c)| (*k, c.clone()))
                    .collect(),
            },
        );
        r.register(
            "rcshim_open_connections",
            "Client connections open now (each holds a max_connections slot; websocket tunnels included)",
            open_connections.clone(),
        );
        r.register(
            "rcshim_open_tunnels",
            "Upgrade tunnels (websockets) open now",
            open_tunnels.clone(),
        );
        r.register(
            "rcshim_accept_errors",
            "Failed accepts on either listener (out of file descriptors, mostly)",
            accept_errors.clone(),
        );
        for (name, help, count) in counters.table() {
            r.register(name, help, count.0.clone());
        }
        front_door.register(&mut r);
        r.register_collector(Box::new(gauges.clone()));

        Metrics(Arc::new(Inner {
            requests,
            latency,
            upstream_errors,
            open_connections,
            open_tunnels,
            accept_errors,
            redis_latency,
            redis_backend,
            counters,
            gauges,
            front_door,
            registry: r,
        }))
    }

    /// The named counters.
    pub fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// Counts one finished request.
    pub fn request(&self, class: RouteClass, status: u16, elapsed: Duration) {
        self.0.requests.count(class, status);
        self.0.latency[class as usize].observe(elapsed);
    }

    /// Says whether the rate limits of the current configuration run on Redis (the Redis
    /// latency histogram is listed only then).
    pub fn set_redis_backend(&self, on: bool) {
        self.0.redis_backend.store(on, Ordering::Relaxed);
    }

    /// Times one Redis rate-limit call.
    pub fn observe_redis(&self, d: Duration) {
        self.0.redis_latency.observe(d);
    }

    /// Counts an upstream failure by kind (`connect`, `timeout`, `protocol`, `reset`, `request`,
    /// `busy`).
    pub fn upstream_error(&self, kind: &str) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.0.upstream_errors[i].inc();
        }
    }

    /// How many upstream failures of `kind` were counted.
    pub fn upstream_errors(&self, kind: &str) -> u64 {
        UPSTREAM_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .map(|i| self.0.upstream_errors[i].get())
            .unwrap_or(0)
    }

    /// Marks a client connection open until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.0.open_connections.inc();
        self.0.counters.connections_total.0.inc();
        GaugeGuard(self.0.open_connections.clone())
    }

    /// Marks a tunnel open until the guard drops.
    pub fn tunnel_opened(&self) -> GaugeGuard {
        self.0.open_tunnels.inc();
        GaugeGuard(self.0.open_tunnels.clone())
    }

    /// Counts a failed `accept`.
    pub fn accept_failed(&self) {
        self.0.accept_errors.inc();
    }

    /// Open tunnels right now.
    pub fn open_tunnels(&self) -> i64 {
        self.0.open_tunnels.get()
    }

    /// Adds the bytes a closed tunnel carried.
    pub fn tunnel_bytes(&self, up: u64, down: u64) {
        let c = &self.0.counters;
        c.tunnel_bytes_up.0.inc_by(up);
        c.tunnel_bytes_down.0.inc_by(down);
    }

    /// Registers a gauge read at render time. `name` is the full metric name, `help` the full
    /// help text (full stop included). Registering a name again replaces the earlier reader
    /// (a config reload builds new owners).
    pub fn register_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        if let Ok(mut g) = self.0.gauges.0.lock() {
            g.retain(|(n, _, _)| *n != name);
            g.push((name, help, Box::new(f)));
        }
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a `String` cannot fail; a collector's error would only cut the text.
        let _ = prometheus_text::encode(&mut out, &self.0.registry);
        out
    }
}

/// The front door's metrics (spec/shim.md §10): TLS handshakes by outcome, PROXY protocol
/// headers by outcome, and the served certificate's expiry (listed only while TLS is on).
/// Callers bump the counters as atomics (`fetch_add(1, Relaxed)`).
#[derive(Default)]
pub struct FrontDoor {
    /// TLS handshakes completed.
    pub tls_handshakes_ok: Count,
    /// TLS handshakes that failed or did not finish within `header_read_timeout`.
    pub tls_handshakes_failed: Count,
    /// PROXY protocol headers accepted (LOCAL included).
    pub proxy_accepted: Count,
    /// Connections closed for a missing, malformed or untrusted PROXY header.
    pub proxy_refused: Count,
    /// The served certificate's `notAfter` (Unix seconds); 0 without TLS.
    pub cert_not_after: CertExpiry,
}

impl FrontDoor {
    fn register(&self, r: &mut Registry) {
        r.register(
            "rcshim_tls_handshakes",
            "TLS handshakes on the client listener, by outcome (failed: refused, broken or not finished within header_read_timeout)",
            Labelled {
                label: "outcome",
                children: vec![
                    ("ok", self.tls_handshakes_ok.0.clone()),
                    ("failed", self.tls_handshakes_failed.0.clone()),
                ],
            },
        );
        r.register(
            "rcshim_proxy_protocol_headers",
            "PROXY protocol headers, by outcome (refused: missing, malformed, late or from an untrusted peer; the connection was closed)",
            Labelled {
                label: "outcome",
                children: vec![
                    ("accepted", self.proxy_accepted.0.clone()),
                    ("refused", self.proxy_refused.0.clone()),
                ],
            },
        );
        r.register(
            "rcshim_tls_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (negative once expired)",
            self.cert_not_after.clone(),
        );
    }
}

/// The served certificate's `notAfter` (Unix seconds, 0 = no TLS), rendered as the seconds
/// left until then; not listed at all while it is 0.
#[derive(Debug, Clone, Default)]
pub struct CertExpiry(Arc<AtomicI64>);

impl Deref for CertExpiry {
    type Target = AtomicI64;

    fn deref(&self) -> &AtomicI64 {
        &self.0
    }
}

impl TypedMetric for CertExpiry {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for CertExpiry {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        ConstGauge::new(self.0.load(Ordering::Relaxed) - now).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

impl Metrics {
    /// The front door's metrics.
    pub fn front_door(&self) -> &FrontDoor {
        &self.0.front_door
    }
}
