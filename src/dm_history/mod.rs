//! The intercepted direct-message history endpoint (`im.messages.others`, alias
//! `dm.messages.others`) and the guarded related endpoints.
//!
//! [`DmHistory::pipeline`] reads like spec/shim.md: per-IP budget, identity, policy in the
//! configured order, per-user budget, parameters, cache, upstream. Each step is a call into
//! its own module; every refusal is Rocket.Chat's own error body.

pub mod errors;
pub mod identity;
pub mod lookup;
pub mod params;
pub mod policy;
pub mod roles;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::cache::{Fetched, Outcome, ResponseCache};
use crate::config::{Config, DmHistoryEndpoint};
use crate::metrics::Metrics;
use crate::proxy::{self, headers, Upstream};
use crate::ratelimit::{Decision, RateLimits, Which};
use crate::respond;
use crate::state::{AppState, Generation, LogFacts, RequestCtx};
use errors::ApiError;
use identity::{Credential, Identities, Verified};
use params::{CanonicalQuery, RawQuery};
use policy::{Check, Identity};
use roles::{Roles, Setting};

/// The canonical upstream path, under `path_prefix`.
const CANONICAL_PATH: &str = "/api/v1/im.messages.others";
/// Largest endpoint answer the shim reads (count is capped, so real answers are far smaller).
const MAX_ANSWER: usize = 32 * 1024 * 1024;
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// State of the endpoint for one configuration generation.
pub struct DmHistory {
    config: Arc<Config>,
    upstream: Upstream,
    metrics: Metrics,
    identities: Arc<Identities>,
    roles: Arc<Roles>,
    setting: Arc<Setting>,
    limits: Arc<RateLimits>,
    cache: Option<ResponseCache>,
}

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
        let service = match config.policy.dm_history_endpoint {
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
                Some(Credential::Headers { user_id, token })
            }
            _ => config
                .service_token()
                .map(|(user_id, token)| Credential::Headers { user_id, token }),
        };
        let roles = Arc::new(Roles::new(&config.policy, service.clone(), metrics.clone()));
        let setting = Arc::new(Setting::new(&config.policy, service, metrics.clone()));
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
        if let Some(c) = &cache {
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
        let l = Arc::downgrade(&limits);
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
        Ok(DmHistory {
            config,
            upstream,
            metrics,
            identities,
            roles,
            setting,
            limits,
            cache,
        })
    }

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
        facts: &mut Facts,
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
    fn spend(&self, decision: Option<Decision>, facts: &mut Facts) -> Result<(), ApiError> {
        let Some(d) = decision else { return Ok(()) };
        if d.allowed {
            facts.rate = Some(d);
            return Ok(());
        }
        let counter = match d.which {
            Which::PerIp => &self.metrics.counters().ratelimit_rejected_ip,
            Which::PerUser => &self.metrics.counters().ratelimit_rejected_user,
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

    /// Steps 2 and 3: permission and setting, in the configured order.
    async fn authorize(
        &self,
        identity: &Identity,
        cred: &Credential,
        ctx: &RequestCtx,
    ) -> Result<(), ApiError> {
        let style = self.config.policy.error_style;
        for check in policy::order(style) {
            let pass = match check {
                Check::Permission => {
                    let roles = self.roles.get(&self.upstream, cred, ctx).await.map_err(|e| {
                        tracing::warn!(request_id = ?ctx.request_id, error = %e, "permission lookup failed; refusing");
                        e.to_api_error()
                    })?;
                    policy::has_permission(identity, &roles)
                }
                Check::Setting => self.setting.enabled(&self.upstream, ctx).await.map_err(|e| {
                    tracing::warn!(request_id = ?ctx.request_id, error = %e, "setting lookup failed; refusing");
                    e.to_api_error()
                })?,
            };
            if !pass {
                return Err(policy::refusal(check, style));
            }
        }
        Ok(())
    }

    /// From the cache, or from the upstream (coalesced), with the caller's own credential.
    async fn answer(
        &self,
        req: &Request<Incoming>,
        identity: &Identity,
        cred: &Credential,
        query: &CanonicalQuery,
        ctx: &RequestCtx,
        facts: &mut Facts,
    ) -> Result<Response<ProxyBody>, ApiError> {
        // Built only when the upstream is really asked (a cache hit needs none of it).
        let fetch = || {
            let target = format!(
                "{}{}?{}",
                self.upstream.path_prefix,
                CANONICAL_PATH,
                query.to_query_string()
            );
            fetch(
                self.upstream.clone(),
                self.metrics.clone(),
                target,
                upstream_headers(req.headers(), cred),
                ctx.clone(),
            )
        };
        let Some(cache) = &self.cache else {
            facts.cache = Outcome::Disabled;
            return fetched_response(&fetch().await?);
        };
        let key = ResponseCache::key(&identity.user_id, &query.cache_key());
        let refresh = wants_refresh(req.headers());
        if !refresh {
            if let Some((hit, ttl_left)) = cache.lookup(&key) {
                facts.cache = Outcome::Hit { ttl_left };
                return fetched_response(&hit);
            }
        }
        let (result, outcome) = cache.fetch(key, refresh, fetch()).await;
        facts.cache = outcome;
        match result.as_ref() {
            Ok(f) => fetched_response(f),
            Err(e) => Err(e.clone()),
        }
    }

    /// The guarded related endpoints: identity, permission and setting, then pass-through.
    async fn guard_check(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
        facts: &mut Facts,
    ) -> Result<(), ApiError> {
        let style = self.config.policy.error_style;
        let raw = RawQuery::parse(req.uri().query())?;
        let cred = Credential::from_request(req.headers(), raw.access_token()?)
            .ok_or_else(|| ApiError::not_logged_in(style))?;
        let identity = self.identify(&cred, ctx).await?;
        facts.user_id = Some(identity.user_id.clone());
        self.authorize(&identity, &cred, ctx).await
    }
}

/// What one request learned on its way through the pipeline.
struct Facts {
    user_id: Option<String>,
    cache: Outcome,
    rate: Option<Decision>,
}

impl Facts {
    /// Nothing known yet; the cache not consulted.
    fn new() -> Self {
        Facts {
            user_id: None,
            cache: Outcome::Bypass,
            rate: None,
        }
    }
}

fn wants_refresh(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0")
        })
        || h.get(header::PRAGMA)
            .map(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
            .unwrap_or(false)
}

/// The headers of the upstream request: the caller's credential, the content negotiation
/// headers, and the forwarding ones added by [`fetch`]. Nothing else of the client's.
fn upstream_headers(client: &HeaderMap, cred: &Credential) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [header::ACCEPT_LANGUAGE, header::USER_AGENT] {
        if let Some(v) = client.get(&name) {
            h.insert(name, v.clone());
        }
    }
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(host) = client.get(header::HOST) {
        h.insert(header::HOST, host.clone());
    }
    // An access_token credential already travels in the canonical query.
    if !matches!(cred, Credential::AccessToken(_)) {
        let mut unused = String::new();
        cred.apply(&mut h, &mut unused);
    }
    h
}

/// One upstream request for the endpoint; its answer read whole (bounded).
async fn fetch(
    upstream: Upstream,
    metrics: Metrics,
    target: String,
    mut h: HeaderMap,
    ctx: RequestCtx,
) -> Result<Fetched, ApiError> {
    let host = h.get(header::HOST).cloned();
    headers::set_forwarding(
        &mut h,
        ctx.peer.ip(),
        ctx.client_ip,
        ctx.peer_trusted,
        host.as_ref(),
        ctx.https,
    );
    if host.is_none() {
        if let Ok(v) = HeaderValue::from_str(upstream.authority().as_str()) {
            h.insert(header::HOST, v);
        }
    }
    h.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let mut req = Request::new(ProxyBody::empty());
    *req.uri_mut() = upstream
        .uri(&target)
        .map_err(|e| ApiError::bad_gateway(&e.to_string()))?;
    *req.headers_mut() = h;
    let resp = upstream.send(req).await.map_err(|e| {
        metrics.upstream_error(e.kind());
        tracing::warn!(request_id = ?ctx.request_id, kind = e.kind(), error = %e, "upstream request for the endpoint failed");
        proxy::upstream_error_body(&e)
    })?;
    let status = resp.status();
    // Copies, not slices: header values and a body read in one chunk share the connection's
    // read buffer (8 KiB and up), and a cached slice would pin that whole buffer for `ttl`
    // (the soak run saw ~7 KiB of RSS per cached 300-byte answer; see `Fetched` below).
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let body = lookup::read_body(resp.into_body(), MAX_ANSWER).await.map_err(|e| {
        metrics.upstream_error("reset");
        tracing::warn!(request_id = ?ctx.request_id, error = %e, "reading the endpoint's answer failed");
        ApiError::bad_gateway("The upstream server broke the connection")
    })?;
    Ok(Fetched {
        status,
        content_type,
        // An exact-size copy (see above), so the cache's `max_bytes` is what it holds.
        body: bytes::Bytes::copy_from_slice(&body),
        at: Instant::now(),
    })
}

/// An upstream (or cached) answer toward the client: its status and body unchanged.
fn fetched_response(f: &Fetched) -> Result<Response<ProxyBody>, ApiError> {
    let mut resp = respond::json(f.status, f.body.clone());
    if let Some(ct) = &f.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    Ok(resp)
}

/// Decorates an answer of the endpoint: `Cache-Status`, the rate-limit headers of the budget
/// that was spent last, `no-store`, and the facts for the access log.
fn finish(mut resp: Response<ProxyBody>, facts: Facts, head: bool) -> Response<ProxyBody> {
    let h = resp.headers_mut();
    h.insert(&CACHE_STATUS, facts.cache.header());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !h.contains_key(&crate::ratelimit::X_RATELIMIT_LIMIT) {
        if let Some(d) = facts.rate {
            for (n, v) in d.headers() {
                h.insert(n, v);
            }
        }
    }
    resp.extensions_mut().insert(LogFacts {
        user_id: facts.user_id,
        cache: Some(facts.cache.label()),
    });
    if head {
        // hyper sends no body for HEAD; keep the length the GET would have had.
        let len = http_body::Body::size_hint(resp.body()).exact();
        *resp.body_mut() = ProxyBody::empty();
        if let Some(len) = len {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    resp
}

/// Answers the intercepted endpoint.
pub async fn handle(
    gen: &Generation,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let mut facts = Facts::new();
    let head = req.method() == Method::HEAD;
    let resp = match gen.dm.pipeline(&req, ctx, &mut facts).await {
        Ok(r) => r,
        Err(e) => respond::error(&e),
    };
    finish(resp, facts, head)
}

/// Answers a guarded related endpoint: the checks, then the upstream unchanged.
pub async fn guard(
    app: &AppState,
    gen: &Generation,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let mut facts = Facts::new();
    let mut resp = match gen.dm.guard_check(&req, ctx, &mut facts).await {
        Ok(()) => proxy::forward(app, &gen.upstream, req, ctx).await,
        Err(e) => respond::error(&e),
    };
    resp.extensions_mut().insert(LogFacts {
        user_id: facts.user_id,
        cache: None,
    });
    resp
}
