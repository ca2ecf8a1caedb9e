//! How the endpoint's answer is made once the request passed every check: from the cache or
//! from the upstream (one canonical request, coalesced), then decorated for the client
//! (`Cache-Status`, the rate-limit headers, `no-store`, HEAD without a body) with the facts the
//! access log records.
//!
//! A cache hit is the fast road: the key is spelled in a buffer the thread keeps, the stored
//! body and content type are shared (reference counts, no copy), the response is built on the
//! request's own header map, and every header value is static or comes from
//! `header_values`, so a hit allocates nothing here.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;

use super::credential::Credential;
use super::lookup;
use super::params::CanonicalQuery;
use super::policy::Identity;
use super::{DmHistory, EndpointFacts};
use crate::access_log;
use crate::body::ProxyBody;
use crate::cache::{Fetched, Outcome, ResponseCache};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::{AccessLogFacts, RequestCtx};
use crate::respond;
use crate::upstream::{failure, request, Upstream, UpstreamError};

/// The canonical upstream path, under `path_prefix`.
const CANONICAL_PATH: &str = "/api/v1/im.messages.others";
/// Largest endpoint answer the shim reads (count is capped, so real answers are far smaller).
const MAX_ANSWER: usize = 32 * 1024 * 1024;
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

impl DmHistory {
    /// From the cache, or from the upstream (coalesced), with the caller's own credential.
    /// `headers` are the client's.
    pub(super) async fn answer(
        &self,
        headers: &HeaderMap,
        identity: &Identity,
        cred: &Credential<'_>,
        query: &CanonicalQuery,
        ctx: &RequestCtx,
        facts: &mut EndpointFacts,
    ) -> Result<Fetched, ApiError> {
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
                upstream_headers(headers, cred),
                ctx.clone(),
            )
        };
        let Some(cache) = &self.cache else {
            facts.cache = Outcome::Disabled;
            return fetch().await;
        };
        let refresh = wants_refresh(headers);
        if !refresh {
            if let Some((hit, ttl_left)) =
                cache.lookup_for(&identity.user_id, |k| query.write_cache_key(k))
            {
                facts.cache = Outcome::Hit { ttl_left };
                return Ok(Fetched::clone(&hit));
            }
        }
        let key = ResponseCache::key(&identity.user_id, &query.cache_key());
        let (result, outcome) = cache.fetch(key, refresh, fetch()).await;
        facts.cache = outcome;
        result.as_ref().clone()
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
fn upstream_headers(client: &HeaderMap, cred: &Credential<'_>) -> HeaderMap {
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
    mut head: HeaderMap,
    ctx: RequestCtx,
) -> Result<Fetched, ApiError> {
    let host = head.remove(header::HOST);
    let report =
        |e: UpstreamError| failure::report(&metrics, &ctx, "upstream request for the endpoint", &e);
    let req = request::own(&upstream, &target, head, host, &ctx).map_err(report)?;
    let resp = upstream.send(req).await.map_err(report)?;
    let status = resp.status();
    // Copies, not slices: header values and a body read in one chunk share the connection's
    // read buffer (8 KiB and up), and a cached slice would pin that whole buffer for `ttl`
    // (the soak run saw ~7 KiB of RSS per cached 300-byte answer; see `Fetched` below).
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let body = lookup::read_body(resp.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| report(UpstreamError::Reset(e)))?;
    Ok(Fetched {
        status,
        content_type,
        // An exact-size copy (see above), so the cache's `max_bytes` is what it holds.
        body: bytes::Bytes::copy_from_slice(&body),
        at: Instant::now(),
    })
}

/// An upstream (or cached) answer toward the client: its status and body unchanged, built on
/// `headers`, a spare map (see `respond::json_with`).
pub(super) fn response(f: Fetched, headers: HeaderMap) -> Response<ProxyBody> {
    let mut resp = respond::json_with(headers, f.status, f.body);
    if let Some(ct) = f.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// Decorates an answer of the endpoint: `Cache-Status`, the rate-limit headers of the budget
/// that was spent last, `no-store`, and the facts for the access log.
pub(super) fn finish(
    mut resp: Response<ProxyBody>,
    facts: EndpointFacts,
    head: bool,
) -> Response<ProxyBody> {
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
    // Only read by the access log (and moved onto a withheld answer's 503 for it): inserting
    // an extension allocates its map, so not when the log is off.
    if access_log::enabled() {
        resp.extensions_mut().insert(AccessLogFacts {
            user_id: facts.user_id.map(|u| u.to_string()),
            cache: Some(facts.cache.label()),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{BudgetKind, Decision};
    use http::StatusCode;
    use std::time::Duration;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn refresh_is_asked_by_no_cache_max_age_0_or_pragma() {
        assert!(wants_refresh(&headers(&[("cache-control", "no-cache")])));
        assert!(wants_refresh(&headers(&[(
            "cache-control",
            "private, No-Cache"
        )])));
        assert!(wants_refresh(&headers(&[("cache-control", "max-age=0")])));
        assert!(wants_refresh(&headers(&[("pragma", "no-cache")])));
        assert!(!wants_refresh(&headers(&[("cache-control", "max-age=10")])));
        assert!(!wants_refresh(&headers(&[("cache-control", "no-store")])));
        assert!(!wants_refresh(&HeaderMap::new()));
    }

    #[test]
    fn the_upstream_gets_the_credential_and_negotiation_only() {
        let client = headers(&[
            ("host", "chat.example.com"),
            ("user-agent", "rc-client/1"),
            ("accept-language", "de"),
            ("cookie", "rc_token=secret"),
            ("x-forwarded-for", "6.6.6.6"),
            ("accept", "text/html"),
        ]);
        let cred = Credential::Bearer("tok".into());
        let h = upstream_headers(&client, &cred);
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "accept-language",
                "user-agent",
                "accept",
                "host",
                "authorization"
            ]
        );
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h["authorization"], "Bearer tok");
        // An access_token credential travels in the canonical query, not in a header.
        let h = upstream_headers(&client, &Credential::AccessToken("tok".into()));
        assert!(!h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn finish_adds_cache_status_no_store_rate_headers_and_log_facts() {
        let facts = EndpointFacts {
            user_id: Some("u1".into()),
            cache: Outcome::Hit { ttl_left: 3 },
            rate: Some(Decision {
                allowed: true,
                which: BudgetKind::PerUser,
                limit: 10,
                remaining: 7,
                reset_after: Duration::from_secs(5),
            }),
            record: None,
        };
        let resp = respond::json(
            StatusCode::OK,
            bytes::Bytes::from_static(b"{\"success\":true}"),
        );
        // The facts are for the access log: there only while it is on.
        let log_on = tracing_subscriber::fmt()
            .with_env_filter("access=info")
            .with_writer(std::io::sink)
            .finish();
        let resp = tracing::subscriber::with_default(log_on, || finish(resp, facts, false));
        let h = resp.headers();
        assert_eq!(h["cache-status"], "rocketchat-shim; hit; ttl=3");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-remaining"], "7");
        let log = resp.extensions().get::<AccessLogFacts>().expect("facts");
        assert_eq!(log.user_id.as_deref(), Some("u1"));
        assert_eq!(log.cache, Some("hit"));
        let log_off = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_writer(std::io::sink)
            .finish();
        let resp = tracing::subscriber::with_default(log_off, || {
            finish(
                respond::json(StatusCode::OK, bytes::Bytes::new()),
                EndpointFacts::new(None),
                false,
            )
        });
        assert!(resp.extensions().get::<AccessLogFacts>().is_none());
    }

    #[test]
    fn finish_for_head_drops_the_body_and_keeps_its_length() {
        let resp = respond::json(
            StatusCode::OK,
            bytes::Bytes::from_static(b"{\"success\":true}"),
        );
        let resp = finish(resp, EndpointFacts::new(None), true);
        assert_eq!(resp.headers()["content-length"], "16");
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(0));
        assert_eq!(
            resp.headers()["cache-status"],
            "rocketchat-shim; fwd=bypass"
        );
    }
}
