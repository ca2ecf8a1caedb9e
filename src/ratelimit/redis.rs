//! The shared budget: the same GCRA as the local limiter, evaluated atomically inside Redis by
//! one Lua script (`EVALSHA`, loaded once, reloaded on `NOSCRIPT`) on Redis's clock, so every
//! replica pointing at one Redis spends from one budget.
//!
//! One multiplexed connection per process (the `redis` crate's connection manager, which
//! reconnects by itself); every call bounded by `rate_limit.redis.timeout`. When Redis is down,
//! slow or erroring, the caller applies `on_failure`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use crate::config::{Budget, RedisConfig};
use crate::metrics::Metrics;
use crate::ratelimit::{BudgetKind, Decision};

const GCRA: &str = include_str!("gcra.lua");
const ROOMS: &str = include_str!("rooms.lua");

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("Redis is not connected: {0}")]
    Connect(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis answered with an error: {0}")]
    Error(String),
}

/// The Redis side of the rate limiter.
pub struct RedisLimiter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: Script,
    /// `max_rooms_per_actor`'s window script (9.4).
    rooms_script: Script,
    prefix: String,
    timeout: Duration,
    /// In an outage (logged once when it starts and once when it ends).
    outage: AtomicBool,
    metrics: Metrics,
}

impl RedisLimiter {
    /// Prepares the client; the connection is made on first use (and re-made by the connection
    /// manager after that), so the shim starts even while Redis is down.
    pub fn new(cfg: &RedisConfig, metrics: Metrics) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| format!("rate_limit.redis.url: {e}"))?;
        Ok(Arc::new(RedisLimiter {
            client,
            conn: OnceCell::new(),
            script: Script::new(GCRA),
            rooms_script: Script::new(ROOMS),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            outage: AtomicBool::new(false),
            metrics,
        }))
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisFailure> {
        let timeout = self.timeout;
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout.max(Duration::from_millis(200)))
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| RedisFailure::Connect(e.to_string()))
            })
            .await
            .cloned()
    }

    /// Spends one request of `budget` for `key` (already namespaced by budget) in Redis.
    pub async fn check(
        &self,
        which: BudgetKind,
        key: &str,
        budget: Budget,
    ) -> Result<Decision, RedisFailure> {
        self.observed(self.call(which, key, budget)).await
    }

    /// `max_rooms_per_actor` (9.4) in Redis: admits a read of `room` by `actor` into the
    /// actor's sorted set (`admit = true`), or gives a room back. `Ok((allowed, new, wait))`.
    pub async fn rooms(
        &self,
        actor: &str,
        room: &str,
        limit: &crate::config::RoomsWindow,
        admit: bool,
    ) -> Result<(bool, bool, Duration), RedisFailure> {
        let call = async {
            let mut conn = self.connection().await?;
            let (allowed, new, wait_ms): (i64, i64, i64) = self
                .rooms_script
                .key(format!("{}rooms:{}", self.prefix, actor))
                .arg(room)
                .arg(limit.rooms)
                .arg(limit.per.as_millis().max(1) as u64)
                .arg(if admit { "admit" } else { "give_back" })
                .invoke_async(&mut conn)
                .await
                .map_err(|e| RedisFailure::Error(e.to_string()))?;
            Ok((
                allowed == 1,
                new == 1,
                Duration::from_millis(wait_ms.max(0) as u64),
            ))
        };
        self.observed(call).await
    }

    /// One Redis call, counted, bounded by `timeout` (a slow answer is a failure), its latency
    /// observed, and the outage state logged once when it starts and once when it ends.
    async fn observed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisFailure>>,
    ) -> Result<T, RedisFailure> {
        let started = Instant::now();
        self.metrics
            .counters()
            .ratelimit_redis_calls
            .fetch_add(1, Relaxed);
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        };
        self.metrics.observe_redis(started.elapsed());
        match &result {
            Ok(_) => {
                if self.outage.swap(false, Relaxed) {
                    tracing::warn!("Redis answers again: rate limits are shared again");
                }
            }
            Err(e) => {
                self.metrics
                    .counters()
                    .ratelimit_redis_errors
                    .fetch_add(1, Relaxed);
                if !self.outage.swap(true, Relaxed) {
                    tracing::error!(error = %e, "Redis rate limiter unavailable; applying rate_limit.redis.on_failure until it returns");
                }
            }
        }
        result
    }

    async fn call(
        &self,
        which: BudgetKind,
        key: &str,
        budget: Budget,
    ) -> Result<Decision, RedisFailure> {
        let mut conn = self.connection().await?;
        let limit = budget.requests.max(1);
        let interval_us = (budget.per.as_micros() / u128::from(limit)).max(1) as u64;
        let tag = match which {
            BudgetKind::PerIp => "ip:",
            BudgetKind::PerUser => "user:",
        };
        let full_key = format!("{}{}{}", self.prefix, tag, key);
        let (allowed, remaining, reset_us): (i64, i64, i64) = self
            .script
            .key(full_key)
            .arg(interval_us)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisFailure::Error(e.to_string()))?;
        Ok(Decision {
            allowed: allowed == 1,
            which,
            limit,
            remaining: remaining.clamp(0, i64::from(limit)) as u32,
            reset_after: Duration::from_micros(reset_us.max(0) as u64),
        })
    }
}
