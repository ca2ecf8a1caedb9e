//! Tunnels for WebSocket and other HTTP/1.1 upgrades: once both sides have switched
//! protocols, bytes are copied both ways until either side closes. There is no total timeout
//! (a Rocket.Chat websocket lives for hours); tunnels are tracked so a graceful shutdown can
//! wait for them, and each holds its connection's `max_connections` slot for its whole life.
//!
//! A `101` becomes a tunnel only when it is the switch the request asked for
//! ([`switch_allowed`]): otherwise the bytes the client sends next would reach the upstream as
//! raw requests that the shim never saw.

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};

use tokio_util::task::TaskTracker;

use crate::connection::clock::ConnSlot;
use crate::metrics::Metrics;
use crate::request::RequestCtx;

/// RFC 6455 section 1.3.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` that proves an upstream read `key`.
pub fn websocket_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a `101` with `answer`'s headers is the switch a request asked for: the request
/// named protocols in `Upgrade` (with `Connection: upgrade`; `asked` is that `Upgrade` value),
/// the answer names one of them, and for a websocket the answer's `Sec-WebSocket-Accept`
/// matches the request's `Sec-WebSocket-Key` (`key`).
pub fn switch_allowed(asked: &HeaderValue, key: Option<&HeaderValue>, answer: &HeaderMap) -> bool {
    let mut named = answer.get_all(header::UPGRADE).iter();
    let (Some(proto), None) = (named.next(), named.next()) else {
        return false;
    };
    let mut chosen = tokens(proto);
    let (Some(chosen), None) = (chosen.next(), chosen.next()) else {
        return false;
    };
    if !tokens(asked).any(|t| t.eq_ignore_ascii_case(chosen)) {
        return false;
    }
    if !chosen.eq_ignore_ascii_case("websocket") {
        return true;
    }
    let Some(key) = key else { return false };
    let mut accepts = answer.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(accept), None) => {
            accept.as_bytes().trim_ascii()
                == websocket_accept(key.as_bytes().trim_ascii()).as_bytes()
        }
        _ => false,
    }
}

/// Spawns the task that joins the client's and the upstream's upgraded connections. `slot`
/// (the client connection's `max_connections` slot) is held until the tunnel ends.
pub fn spawn_tunnel(
    tunnels: &TaskTracker,
    metrics: &Metrics,
    client: OnUpgrade,
    upstream: OnUpgrade,
    ctx: &RequestCtx,
    slot: Option<Arc<ConnSlot>>,
) {
    let metrics = metrics.clone();
    let request_id = ctx.request_id.clone();
    tunnels.spawn(async move {
        let _slot = slot;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(request_id = ?request_id, error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _open = metrics.tunnel_opened();
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                metrics.tunnel_bytes(up, down);
                tracing::debug!(request_id = ?request_id, up, down, "tunnel closed");
            }
            Err(e) => {
                tracing::debug!(request_id = ?request_id, error = %e, "tunnel ended with an error");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn rfc_6455_sample_key() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_the_switch_that_was_asked_for() {
        let ws = HeaderValue::from_static("websocket");
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let good = ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(switch_allowed(
            &ws,
            Some(&key),
            &answer(&[("upgrade", "WebSocket"), good])
        ));
        // No key asked, no accept, a wrong accept, two accepts, another protocol, none named.
        assert!(!switch_allowed(
            &ws,
            None,
            &answer(&[("upgrade", "websocket"), good])
        ));
        assert!(!switch_allowed(
            &ws,
            Some(&key),
            &answer(&[("upgrade", "websocket")])
        ));
        assert!(!switch_allowed(
            &ws,
            Some(&key),
            &answer(&[("upgrade", "websocket"), ("sec-websocket-accept", "x")])
        ));
        assert!(!switch_allowed(
            &ws,
            Some(&key),
            &answer(&[("upgrade", "websocket"), good, good])
        ));
        assert!(!switch_allowed(
            &ws,
            Some(&key),
            &answer(&[("upgrade", "h2c"), good])
        ));
        assert!(!switch_allowed(&ws, Some(&key), &answer(&[good])));
        // Other protocols: named on both sides is enough.
        let foo = HeaderValue::from_static("foo/2, bar");
        assert!(switch_allowed(&foo, None, &answer(&[("upgrade", "bar")])));
        assert!(!switch_allowed(&foo, None, &answer(&[("upgrade", "foo")])));
        assert!(!switch_allowed(
            &foo,
            None,
            &answer(&[("upgrade", "bar, foo/2")])
        ));
    }
}
