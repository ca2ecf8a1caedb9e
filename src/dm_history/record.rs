//! What the endpoint and the guarded related endpoints write into the audit trail
//! (spec/shim.md 9.1), and the rule that makes it evidence: **durability before disclosure**.
//!
//! The pipeline collects [`RecordFacts`] as it learns them (the alias from the path, the room a
//! request names as soon as its query string is read, the actor once identified, the canonical
//! parameters once valid, the members just before the answer); the answer then becomes an
//! [`Event`] from the exact body the client receives, and [`commit`] awaits its append:
//!
//! - an allowed answer (from the upstream or the cache) goes back to hyper only after its
//!   record is written (and `fdatasync`'d with `audit.fsync = "always"`); if it cannot be,
//!   `on_failure = "deny"` sends the 503 [`UNAVAILABLE_BODY`] instead, nothing disclosed, and
//!   `"allow"` sends the answer and logs it (that log line is then its only trace);
//! - a refusal is sent whatever happens to its record (it is still awaited, so that a flood of
//!   refusals meets the trail's back-pressure instead of piling up).
//!
//! Nothing here reads a credential or a message text: the actor is the verified identity, the
//! query is the canonical one (or, for a guarded endpoint, its pairs without `access_token`),
//! and the answer body is reduced to a count and a digest of ids by `audit::answer`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::params::{CanonicalQuery, Pair, RawQuery, MAX_ROOM_ID_CHARS};
use super::policy::Identity;
use crate::audit::{
    Alias, AuditTrail, CacheStatus, Decision, Endpoint, Event, Person, Room, UNAVAILABLE_BODY,
};
use crate::body::ProxyBody;
use crate::config::AuditOnFailure;
use crate::request::{AccessLogFacts, RequestCtx};
use crate::respond;
use crate::route::{self, Guarded};

/// The most of a forwarded non-2xx answer read to find its error id (Rocket.Chat's error
/// bodies are a few hundred bytes; a larger one is passed on unread beyond this).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What a record says about the request, gathered along the pipeline.
#[derive(Debug, Clone)]
pub(super) struct RecordFacts {
    pub endpoint: Endpoint,
    pub alias: Alias,
    pub actor: Option<Person>,
    pub room: Option<Room>,
    pub query: Option<Value>,
    /// The `X-Audit-Reason` given (9.2), trimmed.
    pub reason: Option<String>,
    /// The read crossed `max_rooms_per_actor` (9.4).
    pub alert: bool,
}

impl RecordFacts {
    /// Nothing known yet but the endpoint and the alias the path called.
    pub fn new(endpoint: Endpoint, path: &str) -> RecordFacts {
        RecordFacts {
            endpoint,
            alias: alias_of(path),
            actor: None,
            room: None,
            query: None,
            reason: None,
            alert: false,
        }
    }

    /// The caller, once identified.
    pub fn identified(&mut self, identity: &Identity) {
        self.actor = Some(Person {
            id: identity.user_id.to_string(),
            username: identity.username.clone(),
        });
    }

    /// The room the query string names, as soon as it is read (so that a refused attempt
    /// still says which room it was after): one plain, valid `roomId` (the parameter rules'
    /// length and character limits, so that a record never carries a value the endpoint would
    /// not have accepted); members unknown yet.
    pub fn named_room(&mut self, raw: &RawQuery) {
        let mut values = raw.pairs().iter().filter(|Pair(k, _)| k == "roomId");
        let (Some(Pair(_, id)), None) = (values.next(), values.next()) else {
            return;
        };
        if !id.trim().is_empty()
            && id.chars().count() <= MAX_ROOM_ID_CHARS
            && !id.chars().any(char::is_control)
        {
            self.room = Some(Room {
                id: id.to_string(),
                members: None,
            });
        }
    }

    /// The endpoint's canonical parameters: `offset` and `count` as numbers, `sort`, `query`
    /// and `fields` (when kept) as the parsed objects. Never `access_token`; `roomId` is the
    /// record's `room`.
    pub fn canonical(&mut self, q: &CanonicalQuery) {
        let mut m = Map::new();
        m.insert("offset".into(), Value::from(q.offset));
        m.insert("count".into(), Value::from(q.count));
        for (name, v) in [
            ("sort", &q.sort),
            ("query", &q.query),
            ("fields", &q.fields),
        ] {
            if let Some(text) = v {
                // Always valid JSON (the params step re-serialised it); a string otherwise.
                let parsed =
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
                m.insert(name.into(), parsed);
            }
        }
        self.query = Some(Value::Object(m));
        self.room = Some(Room {
            id: q.room_id.clone(),
            members: self.room.take().and_then(|r| r.members),
        });
    }

    /// A guarded endpoint's parameters, forwarded as they came: its query pairs as strings (a
    /// repeated key as an array), without `access_token`.
    pub fn forwarded(&mut self, raw: &RawQuery) {
        let mut m = Map::new();
        for Pair(k, v) in raw.pairs() {
            if k == "access_token" {
                continue;
            }
            match m.get_mut(k.as_ref()) {
                None => {
                    m.insert(k.to_string(), Value::String(v.to_string()));
                }
                Some(Value::Array(a)) => a.push(Value::String(v.to_string())),
                Some(first) => {
                    let first = first.take();
                    m.insert(
                        k.to_string(),
                        Value::Array(vec![first, Value::String(v.to_string())]),
                    );
                }
            }
        }
        self.query = Some(Value::Object(m));
    }

    /// The event for the answer sent: `body` is exactly what the client receives.
    pub fn event(
        self,
        ctx: &RequestCtx,
        decision: Decision,
        status: StatusCode,
        body: &[u8],
        cache: CacheStatus,
    ) -> Event {
        let mut e = Event::new(
            String::from_utf8_lossy(ctx.request_id.as_bytes()),
            ctx.client_ip,
            self.endpoint,
            self.alias,
        );
        e.actor = self.actor;
        e.room = self.room;
        e.query = self.query;
        e.reason = self.reason;
        e.alert = self.alert;
        e.cache = cache;
        e.set_answer(decision, status.as_u16(), body);
        e
    }
}

/// The record's `endpoint` for a guarded route.
pub(super) fn guarded_endpoint(g: Guarded) -> Endpoint {
    match g {
        Guarded::ListEveryone => Endpoint::ListEveryone,
        Guarded::Counters => Endpoint::Counters,
    }
}

/// The alias the client called: `dm` when a canonical reading of the path (the ones the router
/// classifies by) ends in a `dm.` name, else `im`.
pub(super) fn alias_of(path: &str) -> Alias {
    let dm = [route::normalize(path), route::normalize_whatwg(path)]
        .iter()
        .any(|reading| {
            let last = reading.rsplit('/').next().unwrap_or("");
            last.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("dm."))
        });
    if dm {
        Alias::Dm
    } else {
        Alias::Im
    }
}

/// The body of an answer the shim made or took from the cache (`Full`); empty otherwise.
pub(super) fn full_body(resp: &Response<ProxyBody>) -> Bytes {
    match resp.body() {
        ProxyBody::Full { data } => data.clone().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Appends `event` and decides what the client gets (see the module comment): `resp` once the
/// record is written, or for an allowed answer whose record failed, the 503 (`deny`) or `resp`
/// (`allow`).
pub(super) async fn commit(
    trail: &AuditTrail,
    event: Event,
    resp: Response<ProxyBody>,
    head: bool,
) -> Response<ProxyBody> {
    let decision = event.decision;
    // Only for the log line of a failure: the request id and who read which room.
    let (request_id, actor, room) = (
        event.request_id.clone(),
        event.actor.as_ref().map(|a| a.id.clone()),
        event.room.as_ref().map(|r| r.id.clone()),
    );
    let e = match trail.append(event).await {
        Ok(_) => return resp,
        Err(e) => e,
    };
    // The writer logs each outage once and counts every failed record.
    match (decision, trail.on_failure()) {
        (Decision::Refuse, _) => {
            tracing::debug!(%request_id, error = %e, "refusal sent without its audit record");
            resp
        }
        (Decision::Allow, AuditOnFailure::Allow) => {
            tracing::warn!(%request_id, actor, room, status = resp.status().as_u16(), error = %e,
                "answer sent without its audit record (audit.on_failure = \"allow\")");
            resp
        }
        (Decision::Allow, AuditOnFailure::Deny) => {
            tracing::debug!(%request_id, error = %e, "answer withheld: its audit record cannot be written");
            unavailable(resp, head)
        }
    }
}

/// The 503 of `on_failure = "deny"`, carrying over the access-log facts of the answer withheld.
fn unavailable(mut withheld: Response<ProxyBody>, head: bool) -> Response<ProxyBody> {
    let mut resp = respond::json(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(UNAVAILABLE_BODY.as_bytes()),
    );
    if let Some(f) = withheld.extensions_mut().remove::<AccessLogFacts>() {
        resp.extensions_mut().insert(f);
    }
    if head {
        *resp.body_mut() = ProxyBody::empty();
        resp.headers_mut().insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(UNAVAILABLE_BODY.len()),
        );
    }
    resp
}

/// The record of a guarded endpoint that passed its checks, written once the dispatcher has
/// forwarded the request: see [`PendingRecord::forwarded`].
pub struct PendingRecord {
    trail: AuditTrail,
    facts: RecordFacts,
    ctx: RequestCtx,
    head: bool,
}

impl PendingRecord {
    pub(super) fn new(
        trail: AuditTrail,
        facts: RecordFacts,
        ctx: &RequestCtx,
        head: bool,
    ) -> PendingRecord {
        PendingRecord {
            trail,
            facts,
            ctx: ctx.clone(),
            head,
        }
    }

    /// Writes the record of the forwarded answer `resp` before it goes to the client. An
    /// upstream answer is `allow` (its error id read from the first [`MAX_ERROR_BODY`] bytes
    /// of a non-2xx body, which is then sent on unchanged); an answer the forwarder made itself
    /// (502, 503, 504) is `refuse`. These answers have no `messages` array to count.
    pub async fn forwarded(self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = resp.status();
        let (decision, resp, body) = match resp.body() {
            ProxyBody::Upstream { .. } if !status.is_success() => {
                let (resp, body) = read_error_body(resp).await;
                (Decision::Allow, resp, body)
            }
            ProxyBody::Upstream { .. } => (Decision::Allow, resp, Bytes::new()),
            _ => {
                let body = full_body(&resp);
                (Decision::Refuse, resp, body)
            }
        };
        let event = self
            .facts
            .event(&self.ctx, decision, status, &body, CacheStatus::Bypass);
        commit(&self.trail, event, resp, self.head).await
    }
}

/// Reads up to [`MAX_ERROR_BODY`] bytes of a streamed upstream answer; the answer goes on with
/// the same bytes (whole when it ended, else what was read followed by the rest of the stream).
async fn read_error_body(resp: Response<ProxyBody>) -> (Response<ProxyBody>, Bytes) {
    let (mut parts, body) = resp.into_parts();
    let ProxyBody::Upstream {
        mut inner,
        rest,
        metrics,
        request_id,
    } = body
    else {
        return (Response::from_parts(parts, body), Bytes::new());
    };
    let mut read = rest.to_vec();
    let ended = loop {
        if read.len() > MAX_ERROR_BODY {
            break false;
        }
        match inner.frame().await {
            None => break true,
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    read.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => {
                // The client would have seen the answer cut short: it gets what came, without
                // a length that promises more.
                metrics.upstream_error("reset");
                tracing::warn!(request_id = ?request_id, error = %e, "upstream broke the connection mid-body");
                parts.headers.remove(header::CONTENT_LENGTH);
                break true;
            }
        }
    };
    let read = Bytes::from(read);
    let body = if ended {
        ProxyBody::full(read.clone())
    } else {
        ProxyBody::Upstream {
            inner,
            rest: read.clone(),
            metrics,
            request_id,
        }
    };
    (Response::from_parts(parts, body), read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_is_the_one_called() {
        assert_eq!(alias_of("/api/v1/dm.messages.others"), Alias::Dm);
        assert_eq!(alias_of("/api/v1/DM.Messages.Others/"), Alias::Dm);
        assert_eq!(alias_of("/api/v1/dm%2Emessages%2Eothers"), Alias::Dm);
        assert_eq!(alias_of("/chat/api/v1/im.counters"), Alias::Im);
        assert_eq!(alias_of("/api/v1/im.messages.others"), Alias::Im);
    }

    #[test]
    fn the_canonical_query_is_typed_and_credential_free() {
        let raw = RawQuery::parse(Some(
            "roomId=r1&count=5&sort=%7B%22ts%22%3A1%7D&access_token=secret&fields=%7B%22msg%22%3A1%7D",
        ))
        .expect("parses");
        let q =
            CanonicalQuery::from_raw(&raw, &crate::config::ParamsConfig::default()).expect("valid");
        let mut f = RecordFacts::new(Endpoint::MessagesOthers, "/api/v1/im.messages.others");
        f.named_room(&raw);
        f.canonical(&q);
        assert_eq!(
            serde_json::to_string(&f.query).expect("json"),
            r#"{"offset":0,"count":5,"sort":{"ts":1},"fields":{"msg":1}}"#
        );
        assert_eq!(f.room.map(|r| r.id).as_deref(), Some("r1"));
    }

    #[test]
    fn a_forwarded_query_keeps_its_pairs_but_the_token() {
        let raw = RawQuery::parse(Some("roomId=r&userId=u&userId=v&access_token=secret"))
            .expect("parses");
        let mut f = RecordFacts::new(Endpoint::Counters, "/api/v1/im.counters");
        f.forwarded(&raw);
        assert_eq!(
            serde_json::to_string(&f.query).expect("json"),
            r#"{"roomId":"r","userId":["u","v"]}"#
        );
    }

    #[test]
    fn only_one_plain_valid_room_id_names_a_room() {
        let named = |q: &str| {
            let mut f = RecordFacts::new(Endpoint::MessagesOthers, "/");
            f.named_room(&RawQuery::parse(Some(q)).expect("parses"));
            f.room.map(|r| r.id)
        };
        assert_eq!(named("roomId=abc").as_deref(), Some("abc"));
        assert_eq!(named("roomId=a&roomId=b"), None);
        assert_eq!(named("roomId=%20"), None);
        assert_eq!(named("roomId=a%0Ab"), None);
        assert_eq!(named(&format!("roomId={}", "x".repeat(129))), None);
        assert_eq!(named("room=abc"), None);
    }
}
