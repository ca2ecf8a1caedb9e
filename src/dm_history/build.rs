//! How the endpoint's state is built for one configuration generation, and what a reload
//! keeps: the verified identities, the rate budgets and the cache survive a reload that does
//! not change their settings (and the rooms' members, while the upstream is the same); the
//! service credential is read from its environment variable;
//! the gauges of the cache and the rate limiter are registered.

use std::sync::Arc;

use super::credential::Credential;
use super::endpoint_setting::EndpointSetting;
use super::identity::Identities;
use super::members::Members;
use super::permission_roles::PermissionRoles;
use super::rooms_window::LocalWindows;
use super::DmHistory;
use crate::cache::ResponseCache;
use crate::config::{Config, DmHistoryEndpoint, RateLimitBackend};
use crate::metrics::Metrics;
use crate::ratelimit::redis::RedisLimiter;
use crate::ratelimit::RateLimits;
use crate::upstream::Upstream;

impl DmHistory {
    /// Builds the endpoint's state; parts whose settings did not change are taken over from
    /// `previous` (a reload keeps the cache, the verified identities and the rate budgets).
    pub fn new(
        config: Arc<Config>,
        upstream: Upstream,
        metrics: Metrics,
        previous: Option<&DmHistory>,
    ) -> Result<Self, String> {
        let same = |f: &dyn Fn(&Config) -> bool| previous.map(|p| f(&p.config)).unwrap_or(false);
        let identities = match previous {
            Some(p)
                if same(&|c| {
                    c.policy.identity_ttl == config.policy.identity_ttl
                        && c.upstream == config.upstream
                }) =>
            {
                p.identities.clone()
            }
            _ => Arc::new(Identities::new(config.policy.identity_ttl, metrics.clone())),
        };
        let members = match previous {
            Some(p)
                if same(&|c| {
                    c.upstream == config.upstream
                        && c.policy.members_ttl == config.policy.members_ttl
                }) =>
            {
                p.members.clone()
            }
            _ => Arc::new(Members::new(config.policy.members_ttl)),
        };
        let reason_pattern = config
            .policy
            .reason_regex()
            .map_err(|e| format!("policy.reason_pattern: invalid regular expression: {e}"))?;
        let service = service_credential(&config)?;
        let roles = Arc::new(PermissionRoles::new(
            &config.policy,
            service.clone(),
            metrics.clone(),
        ));
        let setting = Arc::new(EndpointSetting::new(
            &config.policy,
            service,
            metrics.clone(),
        ));
        let limits = match previous {
            Some(p) if same(&|c| c.rate_limit == config.rate_limit) => p.limits.clone(),
            _ => Arc::new(RateLimits::new(&config.rate_limit, metrics.clone())?),
        };
        let cache = if !config.cache.enabled {
            None
        } else {
            match previous {
                Some(p) if same(&|c| c.cache == config.cache) => p.cache.clone(),
                _ => Some(ResponseCache::new(&config.cache, metrics.clone())),
            }
        };
        let windows = match (&config.policy.max_rooms_per_actor, previous) {
            (None, _) => None,
            (Some(w), Some(p))
                if p.windows.is_some()
                    && p.config.policy.max_rooms_per_actor.as_ref() == Some(w) =>
            {
                p.windows.clone()
            }
            (Some(w), _) => Some(Arc::new(LocalWindows::new(w.clone()))),
        };
        // 9.4 on Redis: the rate limiter's connection when it has one, else one of its own
        // (max_rooms_per_actor does not depend on rate_limit.enabled).
        let rooms_redis = match (&windows, config.rate_limit.backend) {
            (Some(_), RateLimitBackend::Redis) => match (limits.redis(), previous) {
                (Some(r), _) => Some(r),
                (None, Some(p))
                    if p.rooms_redis.is_some()
                        && p.config.rate_limit.redis == config.rate_limit.redis =>
                {
                    p.rooms_redis.clone()
                }
                _ => Some(RedisLimiter::new(
                    &config.rate_limit.redis,
                    metrics.clone(),
                )?),
            },
            _ => None,
        };
        register_gauges(&metrics, cache.as_ref(), &limits);
        Ok(DmHistory {
            config,
            upstream,
            metrics,
            identities,
            roles,
            setting,
            limits,
            cache,
            members,
            reason_pattern,
            windows,
            rooms_redis,
        })
    }
}

/// The service account's credential, when one is configured and its token variable is set;
/// required (an error naming what is missing) when the setting is read from the upstream.
fn service_credential(config: &Config) -> Result<Option<Credential<'static>>, String> {
    Ok(match config.policy.dm_history_endpoint {
        DmHistoryEndpoint::Upstream => {
            let sa = config.upstream.service_account.as_ref().ok_or(
                "policy.dm_history_endpoint = \"upstream\" needs [upstream.service_account]",
            )?;
            let (user_id, token) = config.service_token().ok_or_else(|| {
                format!(
                    "upstream.service_account.token_env: the environment variable {} is not set (policy.dm_history_endpoint = \"upstream\" needs the service account's token)",
                    sa.token_env
                )
            })?;
            Some(Credential::Headers {
                user_id: user_id.into(),
                token: token.into(),
            })
        }
        _ => config
            .service_token()
            .map(|(user_id, token)| Credential::Headers {
                user_id: user_id.into(),
                token: token.into(),
            }),
    })
}

/// The gauges `/metrics` reads from the endpoint's state: cache entries and bytes, rate-limit
/// keys (weakly held, so an old generation's limiter is not kept alive by its gauge).
fn register_gauges(metrics: &Metrics, cache: Option<&ResponseCache>, limits: &Arc<RateLimits>) {
    if let Some(c) = cache {
        let (a, b) = (c.clone(), c.clone());
        metrics.register_gauge(
            "rcshim_cache_entries",
            "Answers held in the cache.",
            move || a.entry_count() as f64,
        );
        metrics.register_gauge(
            "rcshim_cache_bytes",
            "Bytes held in the cache (bodies plus per-entry overhead).",
            move || b.weighted_size() as f64,
        );
    }
    let l = Arc::downgrade(limits);
    metrics.register_gauge(
        "rcshim_ratelimit_keys",
        "Keys held by the local rate limiters.",
        move || {
            l.upgrade()
                .map(|l| {
                    (l.per_ip.as_ref().map(|b| b.len()).unwrap_or(0)
                        + l.per_user.as_ref().map(|b| b.len()).unwrap_or(0))
                        as f64
                })
                .unwrap_or(0.0)
        },
    );
}
