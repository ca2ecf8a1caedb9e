//! Rate limits for the intercepted endpoint: a `per_ip` budget spent before identity (so
//! made-up tokens cannot flood the upstream's `/me`) and a `per_user` budget spent after the
//! policy, keyed by user id (so `im.` and `dm.` share it). GCRA (governor) with a burst of
//! `requests`; answers and headers in Rocket.Chat's shape (spec/shim.md §5).
//!
//! Idle keys are forgotten by a background sweep, so memory stays bounded however many
//! distinct keys appear.

use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::header::{HeaderName, RETRY_AFTER};
use http::HeaderValue;

/// `X-RateLimit-Limit` (names built once: they are on every answer of the endpoint).
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset` (Unix milliseconds).
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

use crate::config::{Budget, OnFailure, RateLimitBackend, RateLimitConfig};
use crate::error::ApiError;
use crate::header_values::{self, Slot};
use crate::metrics::Metrics;

pub mod redis;
pub mod refusal;
use self::redis::RedisLimiter;

/// BudgetKind budget decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetKind {
    PerIp,
    PerUser,
}

/// The outcome of spending one request from a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub which: BudgetKind,
    /// `requests` of the budget.
    pub limit: u32,
    /// Requests left right now (0 when refused).
    pub remaining: u32,
    /// Refused: until the next request is allowed. Allowed: until the budget is full again.
    pub reset_after: Duration,
}

impl Decision {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix milliseconds,
    /// as Rocket.Chat sends it). The values come from [`header_values`]: no allocation in the
    /// steady state (they are on every answer of the endpoint).
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        let reset_ms = SystemTime::now()
            .checked_add(self.reset_after)
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        [
            (
                X_RATELIMIT_LIMIT.clone(),
                header_values::number(Slot::Limit, self.limit.into()),
            ),
            (
                X_RATELIMIT_REMAINING.clone(),
                header_values::number(Slot::Remaining, self.remaining.into()),
            ),
            (
                X_RATELIMIT_RESET.clone(),
                header_values::number(Slot::Reset, reset_ms),
            ),
        ]
    }

    /// Whole seconds to wait, rounded up, at least 1.
    pub fn wait_secs(&self) -> u64 {
        let ms = self.reset_after.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }

    /// The 429 answer: Rocket.Chat's body, the three headers and `Retry-After`. (The
    /// endpoint's own road sends the same answer prebuilt: [`refusal::response`].)
    pub fn refusal(&self) -> ApiError {
        let secs = self.wait_secs();
        let mut e = ApiError::too_many_requests(secs);
        for (n, v) in self.headers() {
            e = e.with_header(n, v);
        }
        e.with_header(RETRY_AFTER, header_values::number(Slot::RetryAfter, secs))
    }
}

type Limiter<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed budget kept in this process.
pub struct LocalBudget<K: Hash + Eq + Clone> {
    limiter: Arc<Limiter<K>>,
    limit: u32,
    interval: Duration,
    which: BudgetKind,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LocalBudget<K> {
    /// `budget.requests` per `budget.per`, burst `requests`; idle keys swept every `sweep`.
    pub fn new(budget: Budget, which: BudgetKind) -> Self {
        let limit = budget.requests.max(1);
        let interval = (budget.per / limit).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN));
        let limiter =
            Arc::new(RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>());
        spawn_sweeper(
            Arc::downgrade(&limiter),
            budget
                .per
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
        );
        LocalBudget {
            limiter,
            limit,
            interval,
            which,
        }
    }

    /// Spends one request for `key`.
    pub fn check(&self, key: &K) -> Decision {
        match self.limiter.check_key(key) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    which: self.which,
                    limit: self.limit,
                    remaining,
                    reset_after: self.interval * (self.limit - remaining.min(self.limit)),
                }
            }
            Err(not_until) => Decision {
                allowed: false,
                which: self.which,
                limit: self.limit,
                remaining: 0,
                reset_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Forgets keys whose budget is full again (idle), and gives the memory back.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn spawn_sweeper<K: Hash + Eq + Clone + Send + Sync + 'static>(
    limiter: Weak<Limiter<K>>,
    every: Duration,
) {
    // Outside a runtime (unit tests of pure logic) there is nothing to sweep with.
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(l) = limiter.upgrade() else { return };
            l.retain_recent();
            l.shrink_to_fit();
        }
    });
}

/// The two budgets of the endpoint, or none when `rate_limit.enabled = false`. With the
/// Redis backend the local budgets stay as the fallback of `on_failure = "local"`.
pub struct RateLimits {
    pub per_ip: Option<LocalBudget<IpAddr>>,
    /// Keyed by the user id as the verified identity holds it (no copy per request).
    pub per_user: Option<LocalBudget<Arc<str>>>,
    budgets: (Budget, Budget),
    redis: Option<Arc<RedisLimiter>>,
    on_failure: OnFailure,
    metrics: Metrics,
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig, metrics: Metrics) -> Result<Self, String> {
        let redis = if cfg.enabled && cfg.backend == RateLimitBackend::Redis {
            Some(RedisLimiter::new(&cfg.redis, metrics.clone())?)
        } else {
            None
        };
        metrics.set_redis_backend(redis.is_some());
        let (per_ip, per_user) = if cfg.enabled {
            (
                Some(LocalBudget::new(cfg.per_ip, BudgetKind::PerIp)),
                Some(LocalBudget::new(cfg.per_user, BudgetKind::PerUser)),
            )
        } else {
            (None, None)
        };
        Ok(RateLimits {
            per_ip,
            per_user,
            budgets: (cfg.per_ip, cfg.per_user),
            redis,
            on_failure: cfg.redis.on_failure,
            metrics,
        })
    }

    /// The shared Redis side, when `backend = "redis"` and the limits are on (the rooms
    /// window of `max_rooms_per_actor` reuses its connection).
    pub fn redis(&self) -> Option<Arc<RedisLimiter>> {
        self.redis.clone()
    }

    /// Spends from the per-IP budget (`Ok(None)` when limits are off). `Err` is the 503 of
    /// `on_failure = "deny"` while Redis is unavailable.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<Option<Decision>, ApiError> {
        let Some(local) = &self.per_ip else {
            return Ok(None);
        };
        self.decide(BudgetKind::PerIp, ip, self.budgets.0, || local.check(&ip))
            .await
    }

    /// Spends from the per-user budget (`Ok(None)` when limits are off).
    pub async fn check_user(&self, user_id: &Arc<str>) -> Result<Option<Decision>, ApiError> {
        let Some(local) = &self.per_user else {
            return Ok(None);
        };
        self.decide(BudgetKind::PerUser, user_id, self.budgets.1, || {
            local.check(user_id)
        })
        .await
    }

    /// Asks Redis when it is the backend, else (or as its fallback) the local budget. The key
    /// is spelled out only for Redis: the local budgets take it as it is.
    async fn decide(
        &self,
        which: BudgetKind,
        key: impl Display,
        budget: Budget,
        local: impl FnOnce() -> Decision,
    ) -> Result<Option<Decision>, ApiError> {
        let Some(redis) = &self.redis else {
            return Ok(Some(local()));
        };
        match redis.check(which, &key.to_string(), budget).await {
            Ok(d) => Ok(Some(d)),
            Err(_) => match self.on_failure {
                OnFailure::Local => {
                    self.metrics
                        .counters()
                        .ratelimit_redis_fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(Some(local()))
                }
                OnFailure::Deny => Err(ApiError::service_unavailable(
                    "The shared rate limiter is unavailable; try again shortly",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_headers() {
        let b = LocalBudget::<String>::new(
            Budget {
                requests: 3,
                per: Duration::from_secs(60),
            },
            BudgetKind::PerUser,
        );
        let k = "u".to_string();
        let rem: Vec<u32> = (0..3).map(|_| b.check(&k).remaining).collect();
        assert_eq!(rem, vec![2, 1, 0]);
        let d = b.check(&k);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // 3 per minute: the next one comes in about 20 s.
        assert!((19..=20).contains(&d.wait_secs()), "{}", d.wait_secs());
        let e = d.refusal();
        assert_eq!(e.status, http::StatusCode::TOO_MANY_REQUESTS);
        let names: Vec<_> = e.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "retry-after"
            ]
        );
        // Another key is unaffected.
        assert!(b.check(&"other".to_string()).allowed);
    }

    #[test]
    fn reset_is_epoch_millis() {
        let d = Decision {
            allowed: false,
            which: BudgetKind::PerIp,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let reset: u64 = d.headers()[2]
            .1
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            reset >= now + 1400 && reset <= now + 1600,
            "{reset} vs {now}"
        );
        assert_eq!(d.wait_secs(), 2);
    }
}
