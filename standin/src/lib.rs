//! A small but faithful stand-in for a Rocket.Chat 6.x server, for rocketchat-shim's
//! integration tests, benchmarks and demo.
//!
//! It serves the REST endpoints the shim relies on (`/api/v1/login`, `/api/v1/me`,
//! `/api/v1/permissions.listAll`, `/api/v1/settings/:id`, `/api/info`) and the endpoints that
//! expose other users' direct messages (`{im,dm}.messages.others`, `{im,dm}.list.everyone`,
//! `{im,dm}.counters`) with Rocket.Chat's bodies, status codes and order of checks, including
//! its weaknesses (`roomId[$ne]=` operator injection, `count=0` and negative counts), so the
//! shim's tests can show that it closes them. It also echoes WebSockets on `/websocket` and
//! `/sockjs/...`, offers streaming test helpers under `/_standin/`, records every request and
//! can inject faults.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let standin = rocketchat_standin::Standin::start().await?;
//! println!("Rocket.Chat stand-in at {}", standin.url());
//! standin.set_dm_history_enabled(false);
//! standin.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod data;
pub mod front_router;
mod query;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::VERSION;
pub use data::{iso_from_millis, Room, Seed, User, BASE_MILLIS, DEFAULT_BEARER_TOKEN};
pub use query::{pagination, parse_qs, Pagination, PaginationSettings};

use server::{lock, Shared};

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// `path?query` exactly as received.
    pub target: String,
    /// The path without the query.
    pub path: String,
    /// Every header in order, names lower-case, repeated ones kept.
    pub headers: Vec<(String, String)>,
    /// Length of the request body.
    pub body_len: u64,
}

impl RecordedRequest {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fault to inject into the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Normal operation.
    #[default]
    None,
    /// Read the request, record it, never answer (the connection stays open).
    HangBeforeHead,
    /// Wait this long before sending the response head.
    SlowHead(Duration),
    /// Send a head with `Content-Length: 1000000` and about 1000 body bytes, then drop the
    /// connection (with SO_LINGER 0, i.e. a TCP reset, on connections accepted while set).
    ResetMidBody,
    /// Answer every new connection with non-HTTP bytes and close it.
    Garbage,
    /// Send a head with `Content-Length: 1000`, then close without any body.
    CloseAfterHead,
}

/// A running stand-in server. Dropping it or calling [`Standin::shutdown`] stops it.
pub struct Standin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Rocket.Chat's accept queue: Node's `server.listen` asks for 511 (`TcpListener::bind` would
/// ask for 128, and a burst of connects, such as a proxy's 1,000 at once, would wait for SYN
/// retries that the real server does not cause).
const BACKLOG: u32 = 511;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Standin {
    /// Starts on `127.0.0.1` with an ephemeral port and the default seed.
    pub async fn start() -> std::io::Result<Standin> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), Seed::default()).await
    }

    /// Starts on `addr` with `seed`.
    pub async fn start_on(addr: SocketAddr, seed: Seed) -> std::io::Result<Standin> {
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(data::State::from_seed(seed)));
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(server::accept_loop(listener, shared.clone(), stop_rx));
        Ok(Standin {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets `API_Enable_Direct_Message_History_EndPoint` to a boolean.
    pub fn set_dm_history_enabled(&self, on: bool) {
        self.set_setting_value(
            "API_Enable_Direct_Message_History_EndPoint",
            serde_json::Value::Bool(on),
        );
    }

    /// Sets the version `/api/info` reports (e.g. `"5.4.2"` to play a server from before 6).
    pub fn set_version(&self, version: &str) {
        lock(&self.shared.state).version = version.to_string();
    }

    /// Sets any setting to any JSON value (e.g. a string `"true"`, which Rocket.Chat treats as
    /// disabled).
    pub fn set_setting_value(&self, id: &str, value: serde_json::Value) {
        lock(&self.shared.state)
            .settings
            .insert(id.to_string(), value);
    }

    /// Replaces the roles holding a permission (and bumps its `_updatedAt`).
    pub fn set_permission_roles(&self, permission: &str, roles: &[&str]) {
        lock(&self.shared.state)
            .set_permission_roles(permission, roles.iter().map(|r| (*r).to_string()).collect());
    }

    /// Adds a user, or replaces the one with the same id.
    pub fn add_user(&self, user: User) {
        lock(&self.shared.state).add_user(user);
    }

    /// Maps an OAuth access token (bearer or `access_token`) to a user id.
    pub fn add_bearer_token(&self, token: &str, user_id: &str) {
        lock(&self.shared.state)
            .bearer
            .insert(token.to_string(), user_id.to_string());
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// How many received requests had exactly this path (query not included).
    pub fn count_path(&self, path: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Sets the fault for new connections and requests.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
    }

    /// Delays the answers for this exact path; `Duration::ZERO` clears the delay.
    pub fn set_delay(&self, path: &str, delay: Duration) {
        let mut delays = lock(&self.shared.delays);
        if delay.is_zero() {
            delays.remove(path);
        } else {
            delays.insert(path.to_string(), delay);
        }
    }

    /// Puts a lenient front router (an nginx whose `proxy_pass` carries a URI) in front of the
    /// stand-in: every path is decoded once, split on decoded `%2F`, dot-resolved and
    /// re-escaped ([`front_router::rewrite`]) before it is routed and recorded.
    pub fn set_front_router(&self, on: bool) {
        self.shared
            .front_router
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops accepting, closes every connection and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let Standin { stop, task, .. } = self;
        drop(stop);
        let _ = task.await;
    }
}
