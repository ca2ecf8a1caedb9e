//! Who is calling: a credential (`credential.rs`) verified by asking the upstream's
//! `GET /api/v1/me` with exactly that credential, and a cache of verified
//! identities keyed by a SHA-256 of the credential (never the raw token). Concurrent first
//! calls with one credential share one upstream call.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use moka::future::Cache;

use crate::dm_history::credential::Credential;
use crate::dm_history::lookup::{self, LookupError};
use crate::dm_history::policy::Identity;
use crate::metrics::Metrics;
use crate::request::RequestCtx;
use crate::upstream::Upstream;

/// The answer of a verification.
#[derive(Debug, Clone)]
pub enum Verified {
    User(Arc<Identity>),
    /// The upstream said 401: not logged in.
    NotLoggedIn,
}

/// Verified identities, cached for `identity_ttl`.
pub struct Identities {
    cache: Cache<[u8; 32], Arc<Identity>>,
    metrics: Metrics,
}

#[derive(Debug, Clone)]
enum VerifyFailure {
    NotLoggedIn,
    Lookup(LookupError),
}

impl Identities {
    pub fn new(ttl: Duration, metrics: Metrics) -> Self {
        Identities {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(100_000)
                .build(),
            metrics,
        }
    }

    /// Verifies `cred`: from the cache, or by one shared call to the upstream's `/me`.
    /// A 401 (or 403) from `/me` is "not logged in" and is not cached; an unreachable or broken
    /// upstream is an error, and the caller fails closed.
    pub async fn verify(
        &self,
        cred: &Credential<'_>,
        upstream: &Upstream,
        ctx: &RequestCtx,
    ) -> Result<Verified, LookupError> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = cred.fingerprint();
        if let Some(id) = self.cache.get(&key).await {
            self.metrics
                .counters()
                .identity_cache_hits
                .fetch_add(1, Relaxed);
            return Ok(Verified::User(id));
        }
        let metrics = &self.metrics;
        let res = self
            .cache
            .try_get_with(key, async {
                metrics
                    .counters()
                    .identity_upstream_calls
                    .fetch_add(1, Relaxed);
                fetch_me(upstream, cred, ctx).await
            })
            .await;
        match res {
            Ok(id) => Ok(Verified::User(id)),
            Err(e) => match e.as_ref() {
                VerifyFailure::NotLoggedIn => Ok(Verified::NotLoggedIn),
                VerifyFailure::Lookup(l) => {
                    metrics.counters().identity_failures.fetch_add(1, Relaxed);
                    Err(l.clone())
                }
            },
        }
    }

    /// Entries held now.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

async fn fetch_me(
    upstream: &Upstream,
    cred: &Credential<'_>,
    ctx: &RequestCtx,
) -> Result<Arc<Identity>, VerifyFailure> {
    let (status, body) = lookup::get_json(upstream, "/api/v1/me", "/api/v1/me", cred, ctx)
        .await
        .map_err(VerifyFailure::Lookup)?;
    match status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(VerifyFailure::NotLoggedIn),
        s => return Err(VerifyFailure::Lookup(LookupError::Status(s, "/api/v1/me"))),
    }
    let user_id = body
        .get("_id")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            VerifyFailure::Lookup(LookupError::Shape("/api/v1/me", "no \"_id\"".into()))
        })?;
    let username = body
        .get("username")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let roles = body
        .get("roles")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Arc::new(Identity {
        user_id: user_id.into(),
        username: username.to_owned(),
        roles,
    }))
}
