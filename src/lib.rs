//! rocketchat-shim: a hardening, caching, rate-limiting, auditing proxy for Rocket.Chat.
//!
//! Every request goes upstream untouched except the direct-message history endpoint
//! (`/api/v1/im.messages.others`, alias `dm.messages.others`), which the shim owns: it checks
//! who is calling, applies the setting and permission policy, validates and canonicalises the
//! parameters, rate-limits, serves from its cache, and only then asks the upstream.
//!
//! # Layout
//!
//! Top to bottom; every import points down (`python3 ../shared/tools/import_graph.py src`
//! lists none that does not).
//!
//! - [`server`]: the listeners, the accept loop, drain and reload; `server/dispatch.rs` routes
//!   each request down one of three roads and logs and counts it.
//! - `admin`: `/livez`, `/readyz`, `/metrics` on their own listener.
//! - [`state`]: the process state and the configuration generation swapped on reload.
//! - [`dm_history`]: the intercepted endpoint's pipeline and the checks of the guarded ones.
//! - `proxy`: the pass-through road (streaming forwarder, upgrade tunnels).
//! - [`cache`], `ratelimit`: the endpoint's response cache and budgets.
//! - [`audit`]: the tamper-evident audit trail, and `audit verify` / `audit report`.
//! - [`upstream`]: the one road to Rocket.Chat: the client, request builders, failure answers.
//! - `connection`: one client connection's life (sniffer, clock, slot).
//! - [`route`]: which road a path takes; [`router_models`] and [`fuzzing`] check it.
//! - [`headers`], [`header_values`], [`body`], `respond`, `access_log`, [`metrics`],
//!   `read_cap`: shared mechanics.
//! - [`request`], [`error`], [`config`]: the ground floor: the request context, Rocket.Chat's
//!   error bodies, the typed configuration.
//! - [`demo`] (feature `demo`, on by default): the shim in front of the embedded stand-in.
#![forbid(unsafe_code)]
// No `unwrap`/`expect` outside tests: a malformed request gets an error answer, never a panic
// (clippy runs with -D warnings in CI, so a new one fails the build).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub(crate) mod access_log;
pub(crate) mod admin;
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
pub mod header_values;
pub mod headers;
pub mod metrics;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod read_cap;
pub mod request;
pub(crate) mod respond;
pub mod route;
pub mod router_models;
pub mod server;
pub mod state;
pub mod upstream;
