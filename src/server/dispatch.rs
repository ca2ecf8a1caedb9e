//! The dispatcher: every request on the client port, in named phases. Its context (the client
//! address by `trusted_proxies`, the request id), the head checks the upstream must never be
//! spared (CL+TE, two `Host`s, oversized heads), the road (`route::classify`): pass-through to
//! the forwarder, the intercepted endpoint to `dm_history`, a guarded related endpoint checked
//! by `dm_history` and then forwarded here, an ambiguous path refused; then the request id on
//! every answer, the metrics and the access log.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::access_log;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::connection::sniff::ConnFlags;
use crate::dm_history;
use crate::error::ApiError;
use crate::headers;
use crate::metrics::RouteClass;
use crate::proxy::Forwarder;
use crate::request::{AccessLogFacts, RequestCtx};
use crate::respond;
use crate::route::{self, Route};
use crate::state::AppState;
use crate::upstream::LocalUpstream;

/// Refuses heads the upstream must never see: a `Content-Length` with a `Transfer-Encoding`
/// (request smuggling), more than one `Host`, and heads over `max_header_bytes`.
fn check_head<B>(req: &Request<B>, flags: &ConnFlags, config: &Config) -> Option<ApiError> {
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && (req.headers().contains_key(header::CONTENT_LENGTH)
            || flags.cl_te_conflict.load(Ordering::Relaxed))
    {
        return Some(ApiError::bad_request(
            "The request has both Content-Length and Transfer-Encoding",
        ));
    }
    // RFC 9112 §3.2: more than one Host line is a 400 (proxies and servers may each pick a
    // different one).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Some(ApiError::bad_request(
            "The request has more than one Host header",
        ));
    }
    let mut size = req.method().as_str().len()
        + req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(1)
        + 12;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    if size as u64 > config.server.max_header_bytes {
        return Some(ApiError::header_too_large());
    }
    None
}

/// What the dispatcher knows of the client connection a request came on.
pub(super) struct ConnInfo {
    pub(super) peer: SocketAddr,
    pub(super) flags: Arc<ConnFlags>,
    /// It came through the shim's own TLS.
    pub(super) https: bool,
    /// A PROXY header named its source (`peer` is that source).
    pub(super) proxied: bool,
    /// The upstream connection it keeps for pass-through requests (HTTP/1.x).
    pub(super) local: Arc<LocalUpstream>,
    /// `peer`'s canonical address (IPv4-mapped IPv6 as IPv4), and as a header value: both
    /// made once per connection.
    pub(super) peer_ip: IpAddr,
    pub(super) peer_value: HeaderValue,
}

pub(super) async fn dispatch(
    app: Arc<AppState>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let ConnInfo {
        peer,
        ref flags,
        https,
        proxied,
        ref local,
        peer_ip,
        ref peer_value,
    } = *conn;
    let start = Instant::now();
    let gen = app.generation();
    let config = &gen.config;
    let trusted = &config.server.trusted_proxies;
    // `peer` is the PROXY header's source when `proxied`: the client itself, never a proxy
    // whose forwarding headers would be believed.
    let peer_trusted = !proxied && headers::is_trusted(peer.ip(), trusted);
    let client_ip = if proxied {
        peer_ip
    } else {
        headers::client_ip(peer.ip(), req.headers(), trusted)
    };
    let client_value = if client_ip == peer_ip {
        peer_value.clone()
    } else {
        headers::ip_value(client_ip)
    };
    let ctx = RequestCtx {
        peer,
        client_ip,
        peer_trusted,
        request_id: headers::request_id(req.headers()),
        https,
        peer_value: peer_value.clone(),
        client_value,
    };
    // The access log's copies of the method and path, only when that log is on (a hot path).
    let logged = access_log::enabled().then(|| (req.method().clone(), req.uri().path().to_owned()));

    let forwarder = Forwarder {
        upstream: &gen.upstream,
        local: Some(local),
        tunnels: &app.tunnels,
        metrics: &app.metrics,
    };
    let (class, mut resp) = if let Some(err) = check_head(&req, flags, config) {
        (RouteClass::Passthrough, respond::error(&err))
    } else {
        match route::classify(
            req.uri().path(),
            &config.upstream.path_prefix,
            // 9.3: with a protected list set, the list and counters endpoints are checked
            // (for protected conversations) even when they are not otherwise guarded.
            config.policy.guard_related_endpoints || config.policy.any_protected(),
        ) {
            Route::Passthrough => {
                let class = if req.version() == Version::HTTP_11
                    && headers::upgrade_protocol(req.headers()).is_some()
                {
                    RouteClass::Websocket
                } else {
                    RouteClass::Passthrough
                };
                let resp = forwarder.forward(req, &ctx).await;
                // Only a 101 that opened a tunnel (forward refuses any other) switches the
                // smuggling guard off: the bytes that follow are the tunnel's, not requests.
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    flags.off.store(true, Ordering::Relaxed);
                }
                (class, resp)
            }
            // The endpoint's pipeline and the guarded road are boxed: their futures are large
            // (9 KiB and more) and hyper moves this future, and keeps a slot of its size, for
            // every request of every road (see `the_request_future_stays_small`).
            Route::Intercepted => (
                RouteClass::Intercepted,
                Box::pin(dm_history::handle(
                    &gen.endpoint,
                    req,
                    &ctx,
                    app.audit.as_ref(),
                ))
                .await,
            ),
            // Checked by the endpoint, then forwarded as it came.
            // With the trail on, the answer goes back only once its record is written.
            Route::Guarded(which) => {
                Box::pin(async {
                    let mut req = req;
                    let checked = gen
                        .endpoint
                        .check_guarded(&mut req, &ctx, which, app.audit.as_ref())
                        .await;
                    let resp = match checked {
                        Ok((facts, record)) => {
                            let mut resp = forwarder.forward(req, &ctx).await;
                            resp.extensions_mut().insert(facts);
                            match record {
                                Some(r) => r.forwarded(resp).await,
                                None => resp,
                            }
                        }
                        Err(refusal) => refusal,
                    };
                    (RouteClass::Guarded, resp)
                })
                .await
            }
            // Answered by the shim, never forwarded: counted with the intercepted requests.
            Route::Ambiguous => (
                RouteClass::Intercepted,
                respond::error(&ApiError::ambiguous_path()),
            ),
        }
    };
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let elapsed = start.elapsed();
    app.metrics.request(class, resp.status().as_u16(), elapsed);
    let facts = resp
        .extensions_mut()
        .remove::<AccessLogFacts>()
        .unwrap_or_default();
    if let Some((method, path)) = &logged {
        access_log::log(&access_log::Entry {
            request_id: &ctx.request_id,
            client: ctx.client_ip,
            method: method.as_str(),
            path,
            status: resp.status().as_u16(),
            bytes: resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            duration: elapsed,
            route: class,
            facts: &facts,
        });
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn req(pairs: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/api/v1/me");
        for (n, v) in pairs {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    fn check(r: &Request<()>, config: &Config) -> Option<String> {
        let flags = ConnFlags::new(Duration::from_secs(10), Duration::from_secs(60));
        check_head(r, &flags, config).map(|e| e.body.to_string())
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<'a, F: std::future::Future>(
        _: impl Fn(Arc<AppState>, &'a ConnInfo, Request<Incoming>) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper keeps a slot of the request future's size per connection and moves every request's
    /// future into it, so its size is paid per request (`memmove`) and per connection (memory).
    /// With the endpoint's pipeline, the guarded road, the upstream connect and the pool's
    /// checkout inline it was 20 KiB in the release build; they are boxed (rare, or one
    /// allocation the endpoint can spare) and it is 3.9 KiB there, 3.6 KiB in a test build
    /// (9.7 KiB with the pipeline inline, 5.7 KiB with the connect and the pool inline).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(dispatch);
        assert!(size <= 4608, "the dispatch future is {size} bytes");
    }

    #[test]
    fn heads_the_upstream_must_never_see_are_refused() {
        let config = Config::default();
        assert_eq!(check(&req(&[("host", "a")]), &config), None);
        assert_eq!(
            check(
                &req(&[("content-length", "3"), ("transfer-encoding", "chunked")]),
                &config
            ),
            Some(r#"{"success":false,"error":"The request has both Content-Length and Transfer-Encoding [error-bad-request]","errorType":"error-bad-request"}"#.into())
        );
        assert_eq!(
            check(&req(&[("host", "a"), ("host", "b")]), &config),
            Some(r#"{"success":false,"error":"The request has more than one Host header [error-bad-request]","errorType":"error-bad-request"}"#.into())
        );
        let mut small = Config::default();
        small.server.max_header_bytes = 64;
        let big = "x".repeat(80);
        let e = check(&req(&[("x-big", &big)]), &small).expect("431");
        assert!(e.contains("error-request-header-too-large"), "{e}");
        // A TE the sniffer saw next to a CL that hyper dropped counts too.
        let flags = ConnFlags::new(Duration::from_secs(10), Duration::from_secs(60));
        flags.cl_te_conflict.store(true, Ordering::Relaxed);
        assert!(check_head(&req(&[("transfer-encoding", "chunked")]), &flags, &config).is_some());
    }
}
