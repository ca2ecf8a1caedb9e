//! The pass-through road: every request that is not the shim's goes upstream as it came,
//! bodies streamed both ways, with only the header hygiene a proxy owes (the rules live in
//! `upstream::request::pass_through`). Upgrades become tunnels (`upgrade.rs`). The response's
//! `X-Request-Id` is set by the server for every answer, so nothing here adds it.

pub mod upgrade;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::connection::clock::ConnSlot;
use crate::error::ApiError;
use crate::headers;
use crate::metrics::Metrics;
use crate::request::RequestCtx;
use crate::respond;
use crate::upstream::request::Target;
use crate::upstream::{failure, request, LocalUpstream, Upstream};

/// What forwarding needs from the process: the upstream, where tunnels are tracked (so a
/// drain can wait for them), and the metrics; and from the client connection, the upstream
/// connection it keeps (HTTP/1.x clients), used for everything but upgrades.
#[derive(Clone, Copy)]
pub struct Forwarder<'a> {
    pub upstream: &'a Upstream,
    pub local: Option<&'a LocalUpstream>,
    pub tunnels: &'a TaskTracker,
    pub metrics: &'a Metrics,
}

impl Forwarder<'_> {
    /// Forwards `req` upstream unchanged (but for hop-by-hop and forwarding headers) and
    /// streams the answer back. An upgrade request becomes a tunnel once the upstream answers
    /// the `101` it asked for; any other `101` is a 502 (see [`upgrade::switch_allowed`]).
    pub async fn forward(
        &self,
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
        // Upgrades go through the pool: the tunnel outlives the request and its connection.
        let local = self
            .local
            .filter(|_| upgrade.is_none() && client_version < Version::HTTP_2);
        let target = if local.is_some() {
            Target::Origin
        } else {
            Target::Absolute
        };
        if let Err(e) =
            request::pass_through(self.upstream, &mut parts, upgrade.as_ref(), ctx, target)
        {
            return respond::error(&match e {
                crate::upstream::UpstreamError::Request(_) => {
                    ApiError::bad_request("The request target is not a path")
                }
                e => failure::report(self.metrics, ctx, "upstream request", &e),
            });
        }
        let out = Request::from_parts(parts, ProxyBody::stream(body));
        let sent = match local {
            Some(local) => local.send(self.upstream, out).await,
            None => self.upstream.send(out).await,
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return respond::error(&failure::report(self.metrics, ctx, "upstream request", &e))
            }
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
                return self.unasked_switch(ctx, client_version);
            };
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
            upgrade::spawn_tunnel(
                self.tunnels,
                self.metrics,
                client_upgrade,
                upstream_upgrade,
                ctx,
                slot,
            );
            return Response::from_parts(parts, ProxyBody::empty());
        }

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let body = ProxyBody::from_upstream(body, self.metrics.clone(), ctx.request_id.clone());
        Response::from_parts(parts, body)
    }

    /// The 502 for a `101` the request did not ask for (or whose websocket accept is wrong),
    /// with `Connection: close` on HTTP/1.x so that nothing else is read from that client
    /// connection.
    fn unasked_switch(&self, ctx: &RequestCtx, version: Version) -> Response<ProxyBody> {
        self.metrics.upstream_error("protocol");
        tracing::warn!(
            request_id = ?ctx.request_id,
            "the upstream answered 101 to a switch the request did not ask for; refused"
        );
        let mut resp = respond::error(&ApiError::bad_gateway(
            "The upstream switched protocols in a way the request did not ask for",
        ));
        if version < Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
