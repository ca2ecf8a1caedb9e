//! What one request carries through the shim: who sent it (the peer, and the client address
//! by the `trusted_proxies` rule), its request id, and the facts the access log records that
//! only the endpoint knows. A leaf module: every road reads it, it reads nothing of theirs.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

/// What the handler knows about one request before routing it.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub peer: SocketAddr,
    /// The client's address by the `trusted_proxies` rule.
    pub client_ip: IpAddr,
    pub peer_trusted: bool,
    pub request_id: HeaderValue,
    /// The client connection came through TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// `peer`'s address as a header value (made once per connection).
    pub peer_value: HeaderValue,
    /// `client_ip` as a header value (the peer's own when they are the same).
    pub client_value: HeaderValue,
}

/// Facts for the access log that only the endpoint pipeline knows, carried in the response's
/// extensions.
#[derive(Debug, Clone, Default)]
pub struct AccessLogFacts {
    pub user_id: Option<String>,
    pub cache: Option<&'static str>,
}
