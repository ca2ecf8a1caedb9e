//! rocketchat-shim: a hardening, caching, rate-limiting sidecar proxy for Rocket.Chat.
#![forbid(unsafe_code)]

pub mod config;
pub mod dm_history;
