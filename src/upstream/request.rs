//! Every request the shim sends upstream is built here, by one of two explicit rules
//! (spec/shim.md §7):
//!
//! * [`pass_through`]: a client's request, edited in place. Hop-by-hop headers go (an asked-for
//!   upgrade is re-added), `X-Forwarded-For` gets the peer appended (the client's own value is
//!   kept only from a trusted peer), `X-Real-IP` becomes the client address, `Host` is kept (or
//!   taken from an absolute-form target, or the upstream's authority), the request id is set,
//!   and it goes out as HTTP/1.1 with its body streamed.
//! * [`own`]: a request the shim makes itself (the endpoint's canonical fetch and the
//!   identity, permission and setting lookups): a fresh head holding only what the caller
//!   passes (the credential, content negotiation), the forwarding headers of the client it is
//!   made for (so Rocket.Chat's own per-IP limits still see the client), `Host` as given or the
//!   upstream's authority, the request id; no body.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Version};

use super::{Upstream, UpstreamError};
use crate::body::ProxyBody;
use crate::headers;
use crate::request::RequestCtx;

/// Edits a client's request head for the upstream (see the module comment). `upgrade` is the
/// protocol the client asked to switch to, if any. `target` is the form the request goes out
/// with: absolute for the pool, origin form (the path and query alone, the client's own `Uri`
/// kept when it already is one) for a connection of the client connection's own. Refuses
/// targets that are not a path (`*`, CONNECT's authority form).
pub fn pass_through(
    upstream: &Upstream,
    parts: &mut Parts,
    upgrade: Option<&HeaderValue>,
    ctx: &RequestCtx,
    target: Target,
) -> Result<(), UpstreamError> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    // Absolute-form targets reduce to origin form; `*` (OPTIONS) and CONNECT's authority form
    // (which has no path, and would otherwise be sent on as `/`) are refused.
    if !path_and_query.starts_with('/') || parts.method == Method::CONNECT {
        return Err(UpstreamError::Request(
            "the request target is not a path".into(),
        ));
    }
    let uri = match target {
        Target::Absolute => Some(upstream.uri(path_and_query)?),
        Target::Origin if parts.uri.scheme().is_none() => None,
        Target::Origin => Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .map(http::Uri::from)
                .unwrap_or_else(|| http::Uri::from_static("/")),
        ),
    };
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    headers::set_forwarding_values(
        &mut parts.headers,
        &ctx.peer_value,
        &ctx.client_value,
        ctx.peer_trusted,
        host.as_ref(),
        ctx.https,
    );
    set_host(&mut parts.headers, host, upstream);
    parts
        .headers
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    if let Some(uri) = uri {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_11;
    Ok(())
}

/// The request-target form a forwarded request goes out with (see [`pass_through`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `http://upstream/path?query`: what the pooled client takes.
    Absolute,
    /// `/path?query`: written as it is on a connection of the shim's own.
    Origin,
}

/// A request of the shim's own: `GET {target}` (a path and query under the upstream, the
/// `path_prefix` already in it) with `head` (the credential and content negotiation only),
/// `host` as the `Host` (the client's, for the endpoint; `None` for lookups: the upstream's
/// authority), the client's forwarding headers and the request id.
pub fn own(
    upstream: &Upstream,
    target: &str,
    mut head: HeaderMap,
    host: Option<HeaderValue>,
    ctx: &RequestCtx,
) -> Result<Request<ProxyBody>, UpstreamError> {
    // A fresh head holds no forwarding headers of the client's, so nothing is "kept from a
    // trusted peer": the rule reduces to the peer and the client address.
    headers::set_forwarding_values(
        &mut head,
        &ctx.peer_value,
        &ctx.client_value,
        false,
        host.as_ref(),
        ctx.https,
    );
    set_host(&mut head, host, upstream);
    head.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let mut req = Request::new(ProxyBody::empty());
    *req.uri_mut() = upstream.uri(target)?;
    *req.headers_mut() = head;
    Ok(req)
}

/// A request no client is behind: `GET {target}` with `head` and the upstream's authority as
/// `Host` (see the module comment).
pub fn unattended(
    upstream: &Upstream,
    target: &str,
    mut head: HeaderMap,
) -> Result<Request<ProxyBody>, UpstreamError> {
    set_host(&mut head, None, upstream);
    let mut req = Request::new(ProxyBody::empty());
    *req.uri_mut() = upstream.uri(target)?;
    *req.headers_mut() = head;
    Ok(req)
}

/// `Host`: the given one, else the upstream's authority.
fn set_host(h: &mut HeaderMap, host: Option<HeaderValue>, upstream: &Upstream) {
    match host {
        Some(v) => {
            h.insert(header::HOST, v);
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(upstream.authority().as_str()) {
                h.insert(header::HOST, v);
            }
        }
    }
}
