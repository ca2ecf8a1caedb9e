//! The upstream road: everything the shim sends to Rocket.Chat goes through here. One pooled
//! client with a process-wide connection cap (`client.rs`, `connector.rs`); the connection
//! each HTTP/1.x client connection keeps for its pass-through requests, driven in its own
//! task (`local.rs`), given back when idle and the cap is reached (`idle.rs`); one place that
//! builds upstream requests, with explicit forwarding rules for client traffic and for the
//! shim's own lookups (`request.rs`); one place that turns a failure into its answer, its log
//! line and its count (`failure.rs`).

mod client;
mod connector;
pub mod failure;
mod idle;
pub mod local;
pub mod request;

use std::time::Duration;

pub use client::Upstream;
pub use local::LocalUpstream;

/// Why the upstream gave no usable answer head.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable, or not connected within `connect_timeout`.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// No response head within `response_timeout`.
    #[error("the upstream sent no response head within {0:?}")]
    Timeout(Duration),
    /// All `upstream.max_connections` connections stayed busy for `connect_timeout`.
    #[error("all {0} upstream connections stayed busy")]
    Busy(u64),
    /// The connection broke or the upstream did not speak HTTP.
    #[error("the upstream broke the exchange: {0}")]
    Protocol(String),
    /// The answer's body broke off while the shim read it whole (the endpoint's answer, a
    /// lookup).
    #[error("the upstream's answer broke off: {0}")]
    Reset(String),
    /// The shim could not build the upstream request (a bug or a bad target).
    #[error("cannot build the upstream request: {0}")]
    Request(String),
    /// The client's own request body failed while it was streamed upstream (bad chunked
    /// framing, or the client went away): a 400, and no upstream error.
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
}

impl UpstreamError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Busy(_) => "busy",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Reset(_) => "reset",
            UpstreamError::Request(_) => "request",
            UpstreamError::ClientBody(_) => "client_body",
        }
    }
}
