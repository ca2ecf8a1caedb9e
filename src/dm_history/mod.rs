//! The intercepted direct-message history endpoint (`im.messages.others`, alias
//! `dm.messages.others`) and the checks of the guarded related endpoints.
//!
//! `DmHistory::pipeline` is spec/shim.md §1-6 line by line, each step a call into its own
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
//! 5. the reason (`X-Audit-Reason`, §9.2, `rules.rs`), when required;
//! 6. the per-user budget;
//! 7. the parameters, validated and canonical (`params/`);
//! 8. protected conversations (§9.3, `rules.rs`, members from `members.rs`, failing closed
//!    while a protected list is set);
//! 9. the distinct rooms per actor (§9.4, `rooms_window.rs`, or Redis);
//! 10. the answer from the cache or the upstream (`answer.rs`); a read that is not a 200
//!     gives its room back to the window.
//!
//! The guarded related endpoints run steps 1 (query syntax), 2, 3 and 4
//! ([`DmHistory::check_guarded`]), then the protected rule for the list and counters
//! endpoints; the server's dispatcher then forwards them unchanged (without `X-Audit-Reason`).
//! While a protected list is set they come here even without `guard_related_endpoints`, and
//! then step 4 is left to Rocket.Chat.
//! Construction and what a reload keeps: `build.rs`.
//!
//! With the audit trail on, every answer of both also leaves a record (`record.rs`): the
//! facts are gathered along the steps above, the room's members are looked up (`members.rs`)
//! just before the answer, and an allowed answer is returned only once its record is written.

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
mod record;
pub mod rooms_window;
pub mod rules;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

use crate::audit::{AuditTrail, CacheStatus, Decision as AuditDecision, Endpoint};
use crate::body::ProxyBody;
use crate::cache::{Fetched, Outcome, ResponseCache};
use crate::config::{Config, OnFailure};
use crate::error::ApiError;
use crate::headers;
use crate::metrics::Metrics;
use crate::ratelimit::{BudgetKind, Decision, RateLimits};
use crate::request::{AccessLogFacts, RequestCtx};
use crate::respond;
use crate::route::Guarded;
use crate::upstream::Upstream;
use credential::Credential;
use endpoint_setting::EndpointSetting;
use identity::{Identities, Verified};
use members::Members;
use params::{CanonicalQuery, Pair, RawQuery};
use permission_roles::PermissionRoles;
use policy::{Check, Identity};
pub use record::PendingRecord;
use record::RecordFacts;

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
    /// Rooms' members for the audit records and the protected rule (kept across a reload to
    /// the same upstream with the same `members_ttl`).
    members: Arc<Members>,
    /// `policy.reason_pattern`, compiled (validated with the config).
    reason_pattern: Option<regex::Regex>,
    /// `policy.max_rooms_per_actor`: each actor's distinct rooms (kept across a reload that
    /// does not change the setting).
    windows: Option<Arc<rooms_window::LocalWindows>>,
    /// With `rate_limit.backend = "redis"`: the windows shared by every replica.
    rooms_redis: Option<Arc<crate::ratelimit::redis::RedisLimiter>>,
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

    /// The endpoint, step by step, on the request's head. `facts` collects what the access log
    /// and the headers need. The answer is the stored (or fetched) one; `handle` makes the
    /// response.
    async fn pipeline(
        &self,
        req: &Parts,
        ctx: &RequestCtx,
        facts: &mut EndpointFacts,
    ) -> Result<Fetched, Stop> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(ApiError::method_not_allowed().into());
        }
        let raw = RawQuery::parse(req.uri.query())?;
        if let Some(r) = facts.record.as_mut() {
            r.named_room(&raw);
        }
        let (cred, identity) = self.admit(&req.headers, &raw, ctx, true, facts).await?;
        // 9.2: after permission and setting (a caller without them learns nothing), before
        // the per-user budget and the parameters.
        let policy = &self.config.policy;
        let reason = rules::reason(
            &req.headers,
            policy.require_reason,
            self.reason_pattern.as_ref(),
        )?;
        if let Some(r) = facts.record.as_mut() {
            r.reason = reason;
        }
        self.spend(self.limits.check_user(&identity.user_id).await?, facts)?;
        let query = CanonicalQuery::from_raw(&raw, &policy.params)?;
        if let Some(r) = facts.record.as_mut() {
            r.canonical(&query);
        }
        // 9.3: after the parameters (the canonical roomId), before the cache.
        self.protected_check(&query.room_id, &identity, &cred, ctx, false, facts)
            .await?;
        // 9.4: after the protected rule, before the cache.
        let taken = self
            .rooms_window(&identity, &query.room_id, ctx, facts)
            .await?;
        let answer = self
            .answer(&req.headers, &identity, &cred, &query, ctx, facts)
            .await;
        let read = matches!(&answer, Ok(f) if f.status == http::StatusCode::OK);
        if taken && !read {
            self.give_back(&identity.user_id, &query.room_id).await;
        }
        Ok(answer?)
    }

    /// `max_rooms_per_actor` (9.4): admits the read of `room_id` into the actor's window or
    /// answers the 429 of section 5, with `alert: true` in the record and a warning. `Ok(true)`
    /// when the room is new in the window (given back if the read does not end in a 200).
    async fn rooms_window(
        &self,
        identity: &Identity,
        room_id: &str,
        ctx: &RequestCtx,
        facts: &mut EndpointFacts,
    ) -> Result<bool, ApiError> {
        let Some(windows) = &self.windows else {
            return Ok(false);
        };
        let limit = windows.limit().clone();
        let admitted = match &self.rooms_redis {
            None => windows.admit(&identity.user_id, room_id),
            Some(redis) => match redis.rooms(&identity.user_id, room_id, &limit, true).await {
                Ok((true, new, _)) => rooms_window::Admit::Allowed { new },
                Ok((false, _, wait)) => rooms_window::Admit::Refused { wait },
                Err(_) => match self.config.rate_limit.redis.on_failure {
                    OnFailure::Local => {
                        self.metrics
                            .counters()
                            .ratelimit_redis_fallbacks
                            .fetch_add(1, Relaxed);
                        windows.admit(&identity.user_id, room_id)
                    }
                    OnFailure::Deny => {
                        return Err(ApiError::service_unavailable(
                            "The shared rate limiter is unavailable; try again shortly",
                        ))
                    }
                },
            },
        };
        match admitted {
            rooms_window::Admit::Allowed { new } => Ok(new),
            rooms_window::Admit::Refused { wait } => {
                tracing::warn!(request_id = ?ctx.request_id, actor = %identity.user_id, username = %identity.username, room = room_id, rooms = limit.rooms, per = ?limit.per, "max_rooms_per_actor reached: read refused");
                if let Some(r) = facts.record.as_mut() {
                    r.alert = true;
                }
                let d = Decision {
                    allowed: false,
                    which: BudgetKind::PerUser,
                    limit: limit.rooms,
                    remaining: 0,
                    reset_after: wait,
                };
                Err(d.refusal())
            }
        }
    }

    /// Gives a room back to the actor's window after a read that was not a 200.
    async fn give_back(&self, actor: &str, room_id: &str) {
        if let Some(windows) = &self.windows {
            // Both places: the room may have been taken locally during a Redis outage.
            windows.give_back(actor, room_id);
            if let (Some(redis), Some(limit)) =
                (&self.rooms_redis, &self.config.policy.max_rooms_per_actor)
            {
                let _ = redis.rooms(actor, room_id, limit, false).await;
            }
        }
    }

    /// The members lookup and the protected rule for one room (9.3). With a protected list
    /// set the lookup fails closed (502/504, or Rocket.Chat's `error-room-not-found` on a
    /// 4xx); without, it is made only for the record, and a failure leaves `members: null`.
    ///
    /// `unverified`: the caller was not found to hold the permission (the counters endpoints
    /// routed here only because a protected list is set). Then a listed room is refused
    /// without asking, and a refused lookup (the caller lacks `view-room-administration`)
    /// lets the request go on: Rocket.Chat itself then shows such a caller only the counters
    /// of rooms they are in. Unreachable, 5xx and timeouts still fail closed.
    async fn protected_check(
        &self,
        room_id: &str,
        identity: &Identity,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
        unverified: bool,
        facts: &mut EndpointFacts,
    ) -> Result<(), ApiError> {
        let policy = &self.config.policy;
        if unverified {
            rules::check_protected(policy, identity, room_id, &[])?;
        }
        let members = if policy.any_protected() {
            match self.members.get(room_id, &self.upstream, cred, ctx).await {
                Ok(m) => Some(m.as_ref().clone()),
                // Unverified (the guard is off): a caller without the permission is refused by
                // the lookup and Rocket.Chat shows them their own rooms only, so their request
                // goes on; one who holds it was refused because the room is unknown, so it is.
                Err(lookup::LookupError::Status(s, _))
                    if s.is_client_error()
                        && unverified
                        && !self.holds_permission(identity, cred, ctx).await? =>
                {
                    None
                }
                Err(lookup::LookupError::Status(s, _)) if s.is_client_error() => {
                    tracing::warn!(request_id = ?ctx.request_id, room = room_id, status = %s, "room members lookup refused; answering error-room-not-found");
                    return Err(ApiError::room_not_found(room_id));
                }
                Err(e) => return Err(e.report(&self.metrics, ctx, "room members lookup")),
            }
        } else if facts.record.is_some() {
            self.members_of(room_id, cred, ctx).await
        } else {
            None
        };
        if let Some(room) = facts.record.as_mut().and_then(|r| r.room.as_mut()) {
            room.members = members.clone();
        }
        if policy.any_protected() {
            rules::check_protected(policy, identity, room_id, members.as_deref().unwrap_or(&[]))?;
        }
        Ok(())
    }

    /// The members of a room for its record; `None` (the record's `null`) when the lookup
    /// fails: without protected lists, a failed lookup does not stop the request.
    async fn members_of(
        &self,
        room_id: &str,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Option<Vec<crate::audit::Person>> {
        match self.members.get(room_id, &self.upstream, cred, ctx).await {
            Ok(m) => Some(m.as_ref().clone()),
            Err(e) => {
                tracing::warn!(request_id = ?ctx.request_id, room = room_id, error = %e, "room members lookup failed; the audit record says members: null");
                None
            }
        }
    }

    /// Spends from a budget; a refusal is the 429.
    fn spend(&self, decision: Option<Decision>, facts: &mut EndpointFacts) -> Result<(), Stop> {
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
        Err(Stop::Limited(d))
    }

    /// Step 1: who is calling (fails closed when `/me` cannot be asked).
    async fn identify(
        &self,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Result<Arc<Identity>, ApiError> {
        match self.identities.verify(cred, &self.upstream, ctx).await {
            Ok(Verified::User(id)) => Ok(id),
            Ok(Verified::NotLoggedIn) => {
                Err(ApiError::not_logged_in(self.config.policy.error_style))
            }
            Err(e) => Err(e.report(&self.metrics, ctx, "identity lookup (/me)")),
        }
    }

    /// Whether the caller's roles hold the permission (the roles lookup fails closed).
    async fn holds_permission(
        &self,
        identity: &Identity,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Result<bool, ApiError> {
        let roles = self
            .roles
            .get(&self.upstream, cred, ctx)
            .await
            .map_err(|e| e.report(&self.metrics, ctx, "permission lookup"))?;
        Ok(policy::has_permission(identity, &roles))
    }

    /// The checks the endpoint and the guarded related endpoints share, in order: the per-IP
    /// budget (before identity, so made-up tokens cannot flood `/me`), the credential and who
    /// it is, then permission and setting.
    async fn admit<'r>(
        &self,
        headers: &'r HeaderMap,
        raw: &'r RawQuery<'_>,
        ctx: &RequestCtx,
        authorize: bool,
        facts: &mut EndpointFacts,
    ) -> Result<(Credential<'r>, Arc<Identity>), Stop> {
        self.spend(self.limits.check_ip(ctx.client_ip).await?, facts)?;
        let cred = Credential::from_request(headers, raw.access_token()?)
            .ok_or_else(|| ApiError::not_logged_in(self.config.policy.error_style))?;
        let identity = self.identify(&cred, ctx).await?;
        facts.identified(&identity);
        if authorize {
            self.authorize(&identity, &cred, ctx).await?;
        }
        Ok((cred, identity))
    }

    /// Steps 2 and 3: permission and setting, in the order `error_style` gives
    /// ([`policy::check_in_order`], the function the policy table's unit tests run); each
    /// answer is looked up only when its check is reached, failing closed.
    async fn authorize(
        &self,
        identity: &Identity,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Result<(), ApiError> {
        policy::check_in_order(self.config.policy.error_style, |check| async move {
            match check {
                Check::Permission => self.holds_permission(identity, cred, ctx).await,
                Check::Setting => self
                    .setting
                    .enabled(&self.upstream, ctx)
                    .await
                    .map_err(|e| e.report(&self.metrics, ctx, "setting lookup")),
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
        which: Guarded,
        facts: &mut EndpointFacts,
    ) -> Result<(), ApiError> {
        let raw = RawQuery::parse(req.uri().query())?;
        let counters = facts
            .record
            .as_ref()
            .is_some_and(|r| r.endpoint == Endpoint::Counters);
        if let Some(r) = facts.record.as_mut().filter(|_| counters) {
            r.named_room(&raw);
        }
        // Routed here without `guard_related_endpoints` only because a protected list is set
        // (9.3): then the caller is identified (no credential is the 401) but Rocket.Chat
        // keeps its own say on permission and setting.
        let guarding = self.config.policy.guard_related_endpoints;
        let (cred, identity) = self
            .admit(req.headers(), &raw, ctx, guarding, facts)
            .await
            .map_err(Stop::into_error)?;
        if let Some(r) = facts.record.as_mut() {
            r.forwarded(&raw);
        }
        // 9.3: the list endpoints show every DM's last message; the counters name one room.
        match which {
            Guarded::ListEveryone => rules::check_list_everyone(&self.config.policy, &identity),
            Guarded::Counters if self.config.policy.any_protected() => {
                // Older Rocket.Chat counters handlers resolve `username` to the DM with that
                // user, which no roomId check can see: refused while rooms are protected.
                if raw
                    .pairs()
                    .iter()
                    .any(|Pair(k, _)| qs_base(k) == "username")
                {
                    return Err(ApiError::invalid_param(
                        "username",
                        "is not accepted while protected conversations are configured; name the room with roomId",
                    ));
                }
                // Every roomId the query names, in every spelling `qs` reads as `roomId`
                // (`roomId`, `roomId[]`, `roomId[0]`, `[roomId]`: one array), so that no
                // second value or bracket spelling slips a protected room past.
                let mut rooms: Vec<&str> = raw
                    .pairs()
                    .iter()
                    .filter(|Pair(k, v)| qs_base(k) == "roomId" && !v.trim().is_empty())
                    .map(|Pair(_, v)| v.as_ref())
                    .collect();
                rooms.dedup();
                for id in rooms {
                    self.protected_check(id, &identity, &cred, ctx, !guarding, facts)
                        .await?;
                }
                Ok(())
            }
            Guarded::Counters => {
                // Without protected lists: the room's members for the record only.
                let room = facts
                    .record
                    .as_ref()
                    .and_then(|r| r.room.as_ref().map(|room| room.id.clone()));
                if let Some(id) = room {
                    self.protected_check(&id, &identity, &cred, ctx, !guarding, facts)
                        .await?;
                }
                Ok(())
            }
        }
    }
}

/// Why the pipeline stopped before an answer: an error answer, or a spent budget (whose 429
/// the endpoint sends prebuilt: `ratelimit::refusal`).
#[derive(Debug)]
enum Stop {
    Refused(ApiError),
    Limited(Decision),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Refused(e)
    }
}

impl Stop {
    /// As an [`ApiError`] (the guarded endpoints' road, which answers and records those).
    fn into_error(self) -> ApiError {
        match self {
            Stop::Refused(e) => e,
            Stop::Limited(d) => d.refusal(),
        }
    }
}

/// What one request learned on its way through the pipeline.
struct EndpointFacts {
    user_id: Option<Arc<str>>,
    cache: Outcome,
    rate: Option<Decision>,
    /// What its audit record will say (only with the trail on).
    record: Option<RecordFacts>,
}

impl EndpointFacts {
    /// Nothing known yet; the cache not consulted.
    fn new(record: Option<RecordFacts>) -> Self {
        EndpointFacts {
            user_id: None,
            cache: Outcome::Bypass,
            rate: None,
            record,
        }
    }

    /// The caller is known.
    fn identified(&mut self, identity: &Identity) {
        self.user_id = Some(identity.user_id.clone());
        if let Some(r) = self.record.as_mut() {
            r.identified(identity);
        }
    }
}

/// Answers the intercepted endpoint; with the trail on, returns only once the answer's
/// record is written (see `record.rs` for what a failure to write it does).
pub async fn handle(
    endpoint: &DmHistory,
    req: Request<Incoming>,
    ctx: &RequestCtx,
    audit: Option<&AuditTrail>,
) -> Response<ProxyBody> {
    // The body (none: GET or HEAD) stays unread and is dropped at the end, as before.
    let (head_parts, _body) = req.into_parts();
    let record = audit.map(|_| RecordFacts::new(Endpoint::MessagesOthers, head_parts.uri.path()));
    let mut facts = EndpointFacts::new(record);
    let head = head_parts.method == Method::HEAD;
    let outcome = endpoint.pipeline(&head_parts, ctx, &mut facts).await;
    // The answer is built on the request's own header map: hyper recycles the answer's map
    // for the next request on the connection, so neither costs a new one.
    let spare = head_parts.headers;
    let (decision, resp) = match outcome {
        Ok(f) => (AuditDecision::Allow, answer::response(f, spare)),
        Err(Stop::Refused(e)) => (AuditDecision::Refuse, respond::error_with(&e, spare)),
        Err(Stop::Limited(d)) => (
            AuditDecision::Refuse,
            crate::ratelimit::refusal::response(&d, spare),
        ),
    };
    let record = facts.record.take();
    let cache = CacheStatus::from_label(facts.cache.label()).unwrap_or(CacheStatus::Bypass);
    // The exact bytes the client receives: none for HEAD.
    let body = if head {
        bytes::Bytes::new()
    } else {
        record::full_body(&resp)
    };
    let resp = answer::finish(resp, facts, head);
    match (audit, record) {
        (Some(trail), Some(record)) => {
            let event = record.event(ctx, decision, resp.status(), &body, cache);
            record::commit(trail, event, resp, head).await
        }
        _ => resp,
    }
}

impl DmHistory {
    /// The checks of a guarded related endpoint (see the module comment). On success, the
    /// facts for the access log of the answer the dispatcher will forward; else the refusal.
    /// The request's hop-by-hop headers are removed first: a header that `Connection` names is
    /// stripped on the way upstream, so it must not be the credential checked (these are plain
    /// API calls, never upgrades, so nothing is lost).
    ///
    /// With the trail on, a refusal's record is written before it is returned, and a request
    /// that passed comes with the [`PendingRecord`] the dispatcher completes with the forwarded
    /// answer ([`PendingRecord::forwarded`]).
    pub async fn check_guarded(
        &self,
        req: &mut Request<Incoming>,
        ctx: &RequestCtx,
        which: Guarded,
        audit: Option<&AuditTrail>,
    ) -> Result<(AccessLogFacts, Option<PendingRecord>), Response<ProxyBody>> {
        headers::strip_hop_by_hop(req.headers_mut());
        // The reason is for the audit trail, never for the upstream (9.2).
        req.headers_mut().remove(rules::REASON_HEADER);
        let record =
            audit.map(|_| RecordFacts::new(record::guarded_endpoint(which), req.uri().path()));
        let mut facts = EndpointFacts::new(record);
        let checked = self.guard_check(req, ctx, which, &mut facts).await;
        let log = AccessLogFacts {
            user_id: facts.user_id.map(|u| u.to_string()),
            cache: None,
        };
        let head = req.method() == Method::HEAD;
        match (checked, audit, facts.record) {
            (Ok(()), Some(trail), Some(r)) => {
                Ok((log, Some(PendingRecord::new(trail.clone(), r, ctx, head))))
            }
            (Ok(()), _, _) => Ok((log, None)),
            (Err(e), audit, record) => {
                let mut resp = respond::error(&e);
                resp.extensions_mut().insert(log);
                if let (Some(trail), Some(r)) = (audit, record) {
                    let body = e.body_bytes();
                    let event = r.event(
                        ctx,
                        AuditDecision::Refuse,
                        e.status,
                        if head { &[] } else { &body },
                        CacheStatus::Bypass,
                    );
                    resp = record::commit(trail, event, resp, head).await;
                }
                Err(resp)
            }
        }
    }
}

/// The parameter name `qs` (Rocket.Chat's query parser) files a key under: the first non-empty
/// part between brackets and dots (`[roomId]` and `roomId[0]` are both `roomId`).
fn qs_base(key: &str) -> &str {
    key.split(['[', ']', '.'])
        .find(|part| !part.is_empty())
        .unwrap_or("")
}
