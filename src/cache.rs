//! The endpoint's response cache (moka): answers keyed by user id + canonical query, stored
//! only when they are a 200 with `"success":true`, for `ttl`, within `max_bytes` (body bytes
//! plus key plus a measured per-entry overhead). Concurrent misses on one key are coalesced:
//! the first starts one upstream fetch in its own task, the others wait for that task; a
//! waiter (the first included) that goes away does not cancel it.
//!
//! The bound holds at every moment, not eventually: moka applies inserts and evicts in
//! deferred maintenance, so a burst of large inserts would sit in memory (and be served) well
//! past `max_bytes` until the next run. Every insert here is applied, and the cache evicted
//! back under `max_bytes`, before the inserting task goes on (inserts happen only on misses,
//! one at a time).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::config::CacheConfig;
use crate::error::ApiError;
use crate::header_values::{self, Slot};
use crate::metrics::Metrics;

/// Bytes counted for each entry beyond its body and key: moka's own bookkeeping (its hash
/// table slot, the entry and its deque nodes, the timer), the two `Arc`s, the timestamps, the
/// content type, and the allocator's rounding of each of those allocations. Measured, not
/// estimated: `cache_memory_stays_within_max_bytes_for_small_answers` fills a 16 MiB cache
/// with ~110-byte answers through a shim process and reads its RSS: about 760 bytes of real
/// memory per entry whose body and key are ~120 bytes (with 256 counted here, the process
/// grew 2 times `max_bytes`). 800 keeps the count above the real cost.
pub const ENTRY_OVERHEAD: u64 = 800;

/// An upstream answer as the shim keeps it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// When the upstream answered.
    pub at: Instant,
}

impl Fetched {
    /// Whether this answer may be stored: a 200 whose JSON says `"success": true`.
    pub fn cacheable(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Success {
            success: Option<bool>,
        }
        self.status == StatusCode::OK
            && serde_json::from_slice::<Success>(&self.body)
                .map(|s| s.success == Some(true))
                .unwrap_or(false)
    }
}

/// The result of a fetch, shared by every waiter.
pub type FetchResult = Arc<Result<Fetched, ApiError>>;

type Inflight = Shared<BoxFuture<'static, FetchResult>>;

/// How a request was answered, for `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache; seconds of freshness left.
    Hit { ttl_left: u64 },
    /// Went upstream (this request started the fetch).
    Miss { stored: bool },
    /// Waited for an identical fetch another request started.
    Collapsed { stored: bool },
    /// `Cache-Control: no-cache`: skipped the lookup and refreshed.
    Refresh { stored: bool },
    /// The cache is off.
    Disabled,
    /// The answer was decided before the cache (policy, parameters, rate limit).
    Bypass,
}

impl Outcome {
    /// The RFC 9211 `Cache-Status` value (static text, or for a hit from
    /// [`header_values`]: no allocation per answer).
    pub fn header(&self) -> HeaderValue {
        let s = match self {
            Outcome::Hit { ttl_left } => return header_values::number(Slot::HitTtl, *ttl_left),
            Outcome::Miss { stored: true } => "rocketchat-shim; fwd=miss; stored",
            Outcome::Miss { stored: false } => "rocketchat-shim; fwd=miss",
            Outcome::Collapsed { stored: true } => "rocketchat-shim; fwd=miss; collapsed; stored",
            Outcome::Collapsed { stored: false } => "rocketchat-shim; fwd=miss; collapsed",
            Outcome::Refresh { stored: true } => "rocketchat-shim; fwd=request; stored",
            Outcome::Refresh { stored: false } => "rocketchat-shim; fwd=request",
            Outcome::Disabled => "rocketchat-shim; fwd=bypass; detail=disabled",
            Outcome::Bypass => "rocketchat-shim; fwd=bypass",
        };
        HeaderValue::from_static(s)
    }

    /// A short label for the access log.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Hit { .. } => "hit",
            Outcome::Miss { .. } => "miss",
            Outcome::Collapsed { .. } => "collapsed",
            Outcome::Refresh { .. } => "refresh",
            Outcome::Disabled => "disabled",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Spells a cache key: user id, a line feed, the canonical query.
fn write_key(out: &mut String, user_id: &str, canonical: impl FnOnce(&mut String)) {
    out.push_str(user_id);
    out.push('\n');
    canonical(out);
}

struct Inner {
    store: Cache<Arc<str>, Arc<Fetched>>,
    /// Serialises insert + maintenance, so no two inserts are pending at once.
    insert_lock: Mutex<()>,
    max_bytes: u64,
    inflight: Mutex<HashMap<Arc<str>, Inflight>>,
    ttl: Duration,
    metrics: Metrics,
}

/// What an entry costs: body, key and [`ENTRY_OVERHEAD`].
fn weight(key: &str, value: &Fetched) -> u64 {
    value.body.len() as u64 + key.len() as u64 + ENTRY_OVERHEAD
}

impl Inner {
    /// Stores an answer and brings the cache back under `max_bytes` before returning. An
    /// answer larger than the whole cache is not stored (moka would only evict it later).
    fn insert(&self, key: Arc<str>, value: Arc<Fetched>) {
        if weight(&key, &value) > self.max_bytes {
            return;
        }
        let _one_at_a_time = match self.insert_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.store.insert(key, value);
        // Applies the insert and evicts (by size and expiry) now, not at some later read.
        self.store.run_pending_tasks();
        self.metrics.counters().cache_stores.fetch_add(1, Relaxed);
    }
}

/// The response cache. Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache(Arc<Inner>);

impl ResponseCache {
    /// A cache with the settings of `cfg` (which must be enabled).
    pub fn new(cfg: &CacheConfig, metrics: Metrics) -> Self {
        let m = metrics.clone();
        let store = Cache::builder()
            .max_capacity(cfg.max_bytes)
            .time_to_live(cfg.ttl)
            .weigher(|k: &Arc<str>, v: &Arc<Fetched>| weight(k, v).min(u32::MAX as u64) as u32)
            .eviction_listener(move |_k, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    m.counters().cache_evictions.fetch_add(1, Relaxed);
                }
            })
            .build();
        ResponseCache(Arc::new(Inner {
            store,
            insert_lock: Mutex::new(()),
            max_bytes: cfg.max_bytes,
            inflight: Mutex::new(HashMap::new()),
            ttl: cfg.ttl,
            metrics,
        }))
    }

    /// The cache key: user id and the credential-free canonical query.
    pub fn key(user_id: &str, canonical: &str) -> Arc<str> {
        let mut k = String::with_capacity(user_id.len() + canonical.len() + 1);
        write_key(&mut k, user_id, |k| k.push_str(canonical));
        Arc::from(k)
    }

    /// [`lookup`](Self::lookup) of the key of `user_id` and the canonical query that
    /// `canonical` writes, spelled in a buffer this thread keeps: a hit allocates no key.
    pub fn lookup_for(
        &self,
        user_id: &str,
        canonical: impl FnOnce(&mut String),
    ) -> Option<(Arc<Fetched>, u64)> {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with(|buf| {
            // Never re-entered (nothing below calls back here), but a busy buffer only costs
            // a fresh one.
            let mut fresh = String::new();
            let mut held = buf.try_borrow_mut();
            let k = match held.as_deref_mut() {
                Ok(k) => k,
                Err(_) => &mut fresh,
            };
            k.clear();
            write_key(k, user_id, canonical);
            self.lookup(k)
        })
    }

    /// A fresh stored answer for `key`, with its seconds of freshness left.
    pub fn lookup(&self, key: &str) -> Option<(Arc<Fetched>, u64)> {
        let hit = self.0.store.get(key)?;
        let age = hit.at.elapsed();
        if age >= self.0.ttl {
            return None;
        }
        self.0.metrics.counters().cache_hits.fetch_add(1, Relaxed);
        Some((hit.clone(), (self.0.ttl - age).as_secs_f64().ceil() as u64))
    }

    /// Answers a miss: joins the fetch already running for `key`, or starts `fetch` in its own
    /// task. Stores the answer when it is cacheable. `refresh` marks a `no-cache` request.
    pub async fn fetch<F>(&self, key: Arc<str>, refresh: bool, fetch: F) -> (FetchResult, Outcome)
    where
        F: Future<Output = Result<Fetched, ApiError>> + Send + 'static,
    {
        let (fut, leader) = {
            let mut inflight = match self.0.inflight.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(f) = inflight.get(&key) {
                (f.clone(), false)
            } else {
                let inner = self.0.clone();
                let task_key = key.clone();
                let task = tokio::spawn(async move {
                    let result = fetch.await;
                    let stored = matches!(&result, Ok(f) if f.cacheable());
                    if let (true, Ok(f)) = (stored, &result) {
                        inner.insert(task_key.clone(), Arc::new(f.clone()));
                    }
                    // Only after storing, so a request arriving now finds the entry.
                    if let Ok(mut m) = inner.inflight.lock() {
                        m.remove(&task_key);
                    }
                    Arc::new(result)
                });
                let fut: BoxFuture<'static, FetchResult> = async move {
                    task.await.unwrap_or_else(|_| {
                        Arc::new(Err(ApiError::bad_gateway("The upstream fetch failed")))
                    })
                }
                .boxed();
                let shared = fut.shared();
                inflight.insert(key.clone(), shared.clone());
                (shared, true)
            }
        };
        let c = self.0.metrics.counters();
        if leader {
            c.cache_misses.fetch_add(1, Relaxed);
        } else {
            c.cache_coalesced.fetch_add(1, Relaxed);
        }
        let result = fut.await;
        let stored = matches!(result.as_ref(), Ok(f) if f.cacheable());
        let outcome = match (refresh, leader) {
            (true, true) => Outcome::Refresh { stored },
            (_, true) => Outcome::Miss { stored },
            (_, false) => Outcome::Collapsed { stored },
        };
        (result, outcome)
    }

    /// Entries held now (after pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.0.store.run_pending_tasks();
        self.0.store.entry_count()
    }

    /// Weighted size held now: body bytes plus per-entry overhead.
    pub fn weighted_size(&self) -> u64 {
        self.0.store.run_pending_tasks();
        self.0.store.weighted_size()
    }

    /// Whether `other` was built from the same settings (then a reload keeps this one).
    pub fn ttl(&self) -> Duration {
        self.0.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(status: u16, body: &'static str) -> Fetched {
        Fetched {
            status: StatusCode::from_u16(status).expect("status"),
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
            at: Instant::now(),
        }
    }

    #[test]
    fn only_successful_200s_are_cacheable() {
        assert!(fetched(200, r#"{"messages":[],"success":true}"#).cacheable());
        assert!(!fetched(200, r#"{"success":false}"#).cacheable());
        assert!(!fetched(200, r#"{"messages":[]}"#).cacheable());
        assert!(!fetched(200, "not json").cacheable());
        assert!(!fetched(400, r#"{"success":true}"#).cacheable());
        assert!(!fetched(500, r#"{"success":true}"#).cacheable());
    }

    #[test]
    fn cache_status_values_follow_rfc_9211() {
        let cases = [
            (
                Outcome::Hit { ttl_left: 4 },
                "rocketchat-shim; hit; ttl=4",
                "hit",
            ),
            (
                Outcome::Miss { stored: true },
                "rocketchat-shim; fwd=miss; stored",
                "miss",
            ),
            (
                Outcome::Miss { stored: false },
                "rocketchat-shim; fwd=miss",
                "miss",
            ),
            (
                Outcome::Collapsed { stored: true },
                "rocketchat-shim; fwd=miss; collapsed; stored",
                "collapsed",
            ),
            (
                Outcome::Refresh { stored: true },
                "rocketchat-shim; fwd=request; stored",
                "refresh",
            ),
            (
                Outcome::Disabled,
                "rocketchat-shim; fwd=bypass; detail=disabled",
                "disabled",
            ),
            (Outcome::Bypass, "rocketchat-shim; fwd=bypass", "bypass"),
        ];
        for (outcome, header, label) in cases {
            assert_eq!(outcome.header(), header);
            assert_eq!(outcome.label(), label);
        }
    }
}
