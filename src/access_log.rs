//! The access log: one JSON line per request on stdout (through `tracing`, target `access`),
//! filtered like every other line by `RUST_LOG`.
//!
//! What is never written: the query string (it may hold `access_token`), any header value
//! (tokens, cookies), request or response bodies.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderValue;

use crate::metrics::RouteClass;
use crate::request::AccessLogFacts;

/// One finished request.
pub struct Entry<'a> {
    pub request_id: &'a HeaderValue,
    pub client: IpAddr,
    pub method: &'a str,
    /// The path only, never the query.
    pub path: &'a str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub duration: Duration,
    pub route: RouteClass,
    pub facts: &'a AccessLogFacts,
}

/// Whether access lines are written (`access` at info level passes the `RUST_LOG` filter).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Writes the line (when `access` at info level is enabled).
pub fn log(e: &Entry<'_>) {
    tracing::info!(
        target: "access",
        request_id = e.request_id.to_str().unwrap_or("-"),
        client = %e.client,
        method = e.method,
        path = e.path,
        status = e.status,
        bytes = e.bytes,
        duration_ms = e.duration.as_secs_f64() * 1000.0,
        route = e.route.as_str(),
        cache = e.facts.cache,
        user_id = e.facts.user_id.as_deref(),
    );
}
