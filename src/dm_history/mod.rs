//! The intercepted direct-message history endpoint (`im.messages.others`, alias
//! `dm.messages.others`) and the checks of the guarded related endpoints.
//!
//! [`DmHistory::pipeline`] is spec/shim.md §1-6 line by line, each step a call into its own
//! module, every refusal Rocket.Chat's own body:
//!
//! 1. method (405 unless GET/HEAD) and query syntax (`params/raw.rs`): refused before anything
//!    is spent, since they need no one's identity;
//! 2. the per-IP budget (`ratelimit`), before identity, so made-up tokens cannot flood `/me`;
//!    its 429, or with `rate_limit.backend = "redis"` and `on_failure = "deny"` the 503 of an
//!    unreachable Redis, comes from there;
//! 3. identity (`identity.rs`, `/me`, fail closed: 401, 502/504);
//! 4. permission and setting in the order `policy.error_style` gives (`policy.rs`: modern
//!    checks the permission first, legacy the setting), the inputs from `permission_roles.rs`
//!    and `endpoint_setting.rs`;
//! 5. the per-user budget;
//! 6. the parameters, validated and canonical (`params/`);
//! 7. the answer from the cache or the upstream (`answer.rs`).
//!
//! The guarded related endpoints run steps 1 (query syntax), 2, 3 and 4
//! ([`DmHistory::check_guarded`]); the server's dispatcher then forwards them unchanged.
//! Construction and what a reload keeps: `build.rs`.

mod answer;
mod build;
pub mod credential;
pub mod endpoint_setting;
pub mod identity;
pub mod lookup;
pub mod members;
pub mod params;
pub mod permission_roles;
pub mod policy;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::cache::{Outcome, ResponseCache};
use crate::config::Config;
use crate::error::ApiError;
use crate::headers;
use crate::metrics::Metrics;
use crate::ratelimit::{BudgetKind, Decision, RateLimits};
use crate::request::{AccessLogFacts, RequestCtx};
use crate::respond;
use crate::upstream::Upstream;
use credential::Credential;
use endpoint_setting::EndpointSetting;
use identity::{Identities, Verified};
use members::Members;
use params::{CanonicalQuery, RawQuery};
use permission_roles::PermissionRoles;
use policy::{Check, Identity};

/// State of the endpoint for one configuration generation.
pub struct DmHistory {
    config: Arc<Config>,
    upstream: Upstream,
    metrics: Metrics,
    identities: Arc<Identities>,
    roles: Arc<PermissionRoles>,
    setting: Arc<EndpointSetting>,
    limits: Arc<RateLimits>,
    cache: Option<ResponseCache>,
    /// Rooms' members for the audit records (kept across a reload to the same upstream).
    members: Arc<Members>,
}

impl DmHistory {
    /// The response cache, when on.
    pub fn cache(&self) -> Option<&ResponseCache> {
        self.cache.as_ref()
    }

    /// The rate limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// The endpoint, step by step. `facts` collects what the access log and the headers need.
    async fn pipeline(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
        facts: &mut EndpointFacts,
    ) -> Result<Response<ProxyBody>, ApiError> {
        let style = self.config.policy.error_style;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(ApiError::method_not_allowed());
        }
        let raw = RawQuery::parse(req.uri().query())?;
        self.spend(self.limits.check_ip(ctx.client_ip).await?, facts)?;
        let cred = Credential::from_request(req.headers(), raw.access_token()?)
            .ok_or_else(|| ApiError::not_logged_in(style))?;
        let identity = self.identify(&cred, ctx).await?;
        facts.user_id = Some(identity.user_id.clone());
        self.authorize(&identity, &cred, ctx).await?;
        self.spend(self.limits.check_user(&identity.user_id).await?, facts)?;
        let query = CanonicalQuery::from_raw(&raw, &self.config.policy.params)?;
        self.answer(req, &identity, &cred, &query, ctx, facts).await
    }

    /// Spends from a budget; a refusal is the 429.
    fn spend(&self, decision: Option<Decision>, facts: &mut EndpointFacts) -> Result<(), ApiError> {
        let Some(d) = decision else { return Ok(()) };
        if d.allowed {
            facts.rate = Some(d);
            return Ok(());
        }
        let counter = match d.which {
            BudgetKind::PerIp => &self.metrics.counters().ratelimit_rejected_ip,
            BudgetKind::PerUser => &self.metrics.counters().ratelimit_rejected_user,
        };
        counter.fetch_add(1, Relaxed);
        Err(d.refusal())
    }

    /// Step 1: who is calling (fails closed when `/me` cannot be asked).
    async fn identify(
        &self,
        cred: &Credential,
        ctx: &RequestCtx,
    ) -> Result<Arc<Identity>, ApiError> {
        match self.identities.verify(cred, &self.upstream, ctx).await {
            Ok(Verified::User(id)) => Ok(id),
            Ok(Verified::NotLoggedIn) => {
                Err(ApiError::not_logged_in(self.config.policy.error_style))
            }
            Err(e) => {
                self.metrics.upstream_error(e.kind());
                tracing::warn!(request_id = ?ctx.request_id, error = %e, "identity lookup failed; refusing");
                Err(e.to_api_error())
            }
        }
    }

    /// Steps 2 and 3: permission and setting, in the order `error_style` gives
    /// ([`policy::check_in_order`], the function the policy table's unit tests run); each
    /// answer is looked up only when its check is reached, failing closed.
    async fn authorize(
        &self,
        identity: &Identity,
        cred: &Credential,
        ctx: &RequestCtx,
    ) -> Result<(), ApiError> {
        policy::check_in_order(self.config.policy.error_style, |check| async move {
            match check {
                Check::Permission => {
                    let roles = self.roles.get(&self.upstream, cred, ctx).await.map_err(|e| {
                        tracing::warn!(request_id = ?ctx.request_id, error = %e, "permission lookup failed; refusing");
                        e.to_api_error()
                    })?;
                    Ok(policy::has_permission(identity, &roles))
                }
                Check::Setting => self.setting.enabled(&self.upstream, ctx).await.map_err(|e| {
                    tracing::warn!(request_id = ?ctx.request_id, error = %e, "setting lookup failed; refusing");
                    e.to_api_error()
                }),
            }
        })
        .await
    }

    /// The guarded related endpoints: per-IP budget (before identity, so made-up tokens cannot
    /// flood the upstream's `/me`), identity, permission and setting, then pass-through.
    /// `req`'s hop-by-hop headers are already gone, so the credential checked is the one that
    /// will be forwarded.
    async fn guard_check(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
        facts: &mut EndpointFacts,
    ) -> Result<(), ApiError> {
        let style = self.config.policy.error_style;
        let raw = RawQuery::parse(req.uri().query())?;
        self.spend(self.limits.check_ip(ctx.client_ip).await?, facts)?;
        let cred = Credential::from_request(req.headers(), raw.access_token()?)
            .ok_or_else(|| ApiError::not_logged_in(style))?;
        let identity = self.identify(&cred, ctx).await?;
        facts.user_id = Some(identity.user_id.clone());
        self.authorize(&identity, &cred, ctx).await
    }
}

/// What one request learned on its way through the pipeline.
struct EndpointFacts {
    user_id: Option<String>,
    cache: Outcome,
    rate: Option<Decision>,
}

impl EndpointFacts {
    /// Nothing known yet; the cache not consulted.
    fn new() -> Self {
        EndpointFacts {
            user_id: None,
            cache: Outcome::Bypass,
            rate: None,
        }
    }
}

/// Answers the intercepted endpoint.
pub async fn handle(
    endpoint: &DmHistory,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let mut facts = EndpointFacts::new();
    let head = req.method() == Method::HEAD;
    let resp = match endpoint.pipeline(&req, ctx, &mut facts).await {
        Ok(r) => r,
        Err(e) => respond::error(&e),
    };
    answer::finish(resp, facts, head)
}

impl DmHistory {
    /// The checks of a guarded related endpoint (see the module comment). On success, the
    /// facts for the access log of the answer the dispatcher will forward; else the refusal.
    /// The request's hop-by-hop headers are removed first: a header that `Connection` names is
    /// stripped on the way upstream, so it must not be the credential checked (these are plain
    /// API calls, never upgrades, so nothing is lost).
    pub async fn check_guarded(
        &self,
        req: &mut Request<Incoming>,
        ctx: &RequestCtx,
    ) -> Result<AccessLogFacts, Response<ProxyBody>> {
        headers::strip_hop_by_hop(req.headers_mut());
        let mut facts = EndpointFacts::new();
        let checked = self.guard_check(req, ctx, &mut facts).await;
        let log = AccessLogFacts {
            user_id: facts.user_id,
            cache: None,
        };
        match checked {
            Ok(()) => Ok(log),
            Err(e) => {
                let mut resp = respond::error(&e);
                resp.extensions_mut().insert(log);
                Err(resp)
            }
        }
    }
}
