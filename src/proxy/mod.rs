//! Transparent forwarding: every request that is not the intercepted endpoint goes upstream
//! as it came, bodies streamed both ways, with only the header hygiene a proxy owes
//! (hop-by-hop removal, forwarding headers, request id). Upgrades become tunnels.

pub mod client;
pub mod headers;
pub mod upgrade;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::dm_history::errors::ApiError;
use crate::respond;
use crate::server::clock::ConnSlot;
use crate::state::{AppState, RequestCtx};

pub use client::{Upstream, UpstreamError};

/// Forwards `req` upstream unchanged (but for hop-by-hop and forwarding headers) and streams
/// the answer back. Upgrade requests become tunnels once the upstream answers `101`.
pub async fn forward(
    app: &AppState,
    upstream: &Upstream,
    mut req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let upgrade = if req.version() == Version::HTTP_11 {
        headers::upgrade_protocol(req.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The connection's slot, for a tunnel to hold; and the key a websocket answer must prove.
    let slot = parts.extensions.remove::<Arc<ConnSlot>>();
    let ws_key = upgrade
        .as_ref()
        .and_then(|_| parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned());
    let client_version = parts.version;

    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    // Absolute-form targets reduce to origin form; `*` (OPTIONS) and CONNECT's authority form
    // (which has no path, and would otherwise be sent on as `/`) are refused.
    let path_and_query = if path_and_query.starts_with('/') && parts.method != Method::CONNECT {
        path_and_query
    } else {
        return respond::error(&ApiError::bad_request("The request target is not a path"));
    };
    let uri = match upstream.uri(path_and_query) {
        Ok(u) => u,
        Err(e) => return upstream_error(app, ctx, &e),
    };

    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    headers::set_forwarding(
        &mut parts.headers,
        ctx.peer.ip(),
        ctx.client_ip,
        ctx.peer_trusted,
        host.as_ref(),
        ctx.https,
    );
    match &host {
        Some(h) => {
            parts.headers.insert(header::HOST, h.clone());
        }
        None => {
            if let Ok(h) = HeaderValue::from_str(upstream.authority().as_str()) {
                parts.headers.insert(header::HOST, h);
            }
        }
    }
    parts
        .headers
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let out = Request::from_parts(parts, ProxyBody::stream(body));

    let mut resp = match upstream.send(out).await {
        Ok(r) => r,
        Err(UpstreamError::ClientBody(e)) => {
            tracing::info!(request_id = ?ctx.request_id, error = %e, "the client's request body failed");
            return respond::error(&upstream_error_body(&UpstreamError::ClientBody(e)));
        }
        Err(e) => return upstream_error(app, ctx, &e),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let asked = match (&upgrade, client_upgrade) {
            (Some(asked), Some(client_upgrade))
                if upgrade::switch_allowed(asked, ws_key.as_ref(), resp.headers()) =>
            {
                Some(client_upgrade)
            }
            _ => None,
        };
        let Some(client_upgrade) = asked else {
            // Dropping the answer drops the upstream connection with it; the client's is
            // closed after the 502, so nothing it sent after this request goes anywhere.
            drop(resp);
            return unasked_switch(app, ctx, client_version);
        };
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            let proto = parts.headers.get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = proto.or(upgrade) {
                parts.headers.insert(header::UPGRADE, p);
            }
            parts
                .headers
                .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
            upgrade::spawn_tunnel(app, client_upgrade, upstream_upgrade, ctx, slot);
            return Response::from_parts(parts, ProxyBody::empty());
        }
    }

    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let body = ProxyBody::from_upstream(body, app.metrics.clone(), ctx.request_id.clone());
    Response::from_parts(parts, body)
}

/// The 502 for a `101` the request did not ask for (or whose websocket accept is wrong), with
/// `Connection: close` on HTTP/1.x so that nothing else is read from that client connection.
fn unasked_switch(app: &AppState, ctx: &RequestCtx, version: Version) -> Response<ProxyBody> {
    app.metrics.upstream_error("protocol");
    tracing::warn!(
        request_id = ?ctx.request_id,
        "the upstream answered 101 to a switch the request did not ask for; refused"
    );
    let mut resp = respond::error(&ApiError::bad_gateway(
        "The upstream switched protocols in a way the request did not ask for",
    ));
    let h = resp.headers_mut();
    h.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    if version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The 502/504 answer for an upstream failure, logged and counted.
pub fn upstream_error(app: &AppState, ctx: &RequestCtx, e: &UpstreamError) -> Response<ProxyBody> {
    app.metrics.upstream_error(e.kind());
    tracing::warn!(
        request_id = ?ctx.request_id,
        kind = e.kind(),
        error = %e,
        "upstream request failed"
    );
    let err = upstream_error_body(e);
    let mut resp = respond::error(&err);
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    resp
}

/// The Rocket.Chat-shaped 502/504 for an upstream failure.
pub fn upstream_error_body(e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Timeout(_) => {
            ApiError::gateway_timeout("The upstream server did not answer in time")
        }
        UpstreamError::Connect(_) => {
            ApiError::bad_gateway("The upstream server could not be reached")
        }
        UpstreamError::Protocol(_) => {
            ApiError::bad_gateway("The upstream server broke the connection")
        }
        UpstreamError::Request(_) => {
            ApiError::bad_gateway("The upstream request could not be built")
        }
        UpstreamError::ClientBody(_) => {
            ApiError::bad_request("The request body is malformed or incomplete")
        }
    }
}
