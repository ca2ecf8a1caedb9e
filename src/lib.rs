//! rocketchat-shim: a hardening, caching, rate-limiting sidecar proxy for Rocket.Chat.
//!
//! Every request goes upstream untouched except the direct-message history endpoint
//! (`/api/v1/im.messages.others`, alias `dm.messages.others`), which the shim owns: it checks
//! who is calling, applies the setting and permission policy, validates and canonicalises the
//! parameters, rate-limits, serves from its cache, and only then asks the upstream.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod body;
pub mod cache;
pub mod config;
pub mod connection;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dm_history;
pub mod error;
pub mod fuzzing;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod read_cap;
pub mod request;
pub mod respond;
pub mod route;
pub mod router_models;
pub mod server;
pub mod state;
pub mod upstream;
