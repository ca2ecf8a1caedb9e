//! Shared test harness: a stand-in Rocket.Chat and a shim in front of it, both on port 0.
#![allow(dead_code)]

pub mod proc;

use std::net::SocketAddr;
use std::time::Duration;

use rocketchat_shim::config::{Config, DmHistoryEndpoint, RolesSource};
use rocketchat_shim::server::{self, Running};
use rocketchat_standin::Standin;

/// A stand-in and a shim in front of it.
pub struct Pair {
    pub standin: Standin,
    pub shim: Running,
}

impl Pair {
    /// `http://127.0.0.1:PORT` of the shim.
    pub fn url(&self) -> String {
        format!("http://{}", self.shim.addr)
    }

    /// The shim's admin URL.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.shim.admin_addr.expect("admin listener on")
        )
    }
}

/// The config the tests start from: upstream = the stand-in, every listener on port 0,
/// the endpoint enabled, roles from the upstream, rate limits off (their tests turn them on).
pub fn base_config(upstream: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.upstream.url = rocketchat_shim::config::parse_upstream_url(upstream).expect("url");
    c.policy.dm_history_endpoint = DmHistoryEndpoint::Enabled;
    c.policy.roles = RolesSource::Upstream;
    c.rate_limit.enabled = false;
    c
}

/// Starts a stand-in with the default seed and a shim configured by `tweak`.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Pair {
    let standin = Standin::start().await.expect("stand-in starts");
    let mut config = base_config(&standin.url());
    tweak(&mut config);
    let shim = server::start(config).await.expect("shim starts");
    Pair { standin, shim }
}

/// A reqwest client that neither pools across tests nor follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Admin credentials of the default seed.
pub fn admin(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "admin-token")
}

/// Alice (plain user) credentials of the default seed.
pub fn alice(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("X-User-Id", "alice-id")
        .header("X-Auth-Token", "alice-token")
}

/// Sends raw bytes on a new TCP connection and returns everything read until the peer closes
/// or `wait` passes without data.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a raw HTTP/1.1 answer (after the blank line).
pub fn raw_body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// A free loopback port with nothing listening on it.
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let p = l.local_addr().expect("addr").port();
    drop(l);
    p
}

/// The body of the admin listener's `GET /metrics` at `admin` (`host:port`): the one way the
/// tests read metrics, so that a change of encoder is seen in one place.
pub async fn metrics_text(admin: impl std::fmt::Display) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of one sample in a `/metrics` text. `name_with_labels` is the sample exactly as
/// rendered before its value: `rcshim_open_tunnels` or
/// `rcshim_upstream_errors_total{kind="connect"}`.
pub fn metric_value<'a>(text: &'a str, name_with_labels: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_with_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(str::trim)
    })
}
