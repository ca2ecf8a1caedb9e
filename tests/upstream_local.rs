//! The upstream connection each HTTP/1.x client connection keeps and drives in its own task
//! (`src/upstream/local.rs`, issue 15): reused across the client connection's requests,
//! closed after `upstream.pool_idle_timeout` of idleness (never while its answer streams),
//! never used for another upstream after a reload, and given back while idle when
//! `upstream.max_connections` is reached, so the pool (HTTP/2 clients, upgrades, the shim's
//! own lookups) and newer client connections are never starved.
//!
//! The upstream is a small raw-TCP server defined here that counts the connections it
//! accepted and the ones still open, and tags every answer with its name.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rocketchat_shim::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A keep-alive upstream answering `200` with its `name` as the body.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => break 'conn,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|p| p + 4)
                            .unwrap_or(buf.len());
                        let slow = String::from_utf8_lossy(&buf[..end]).starts_with("GET /slow");
                        buf.drain(..end);
                        if slow {
                            // 10 pieces, 80 ms apart: 800 ms of body.
                            let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\n";
                            if s.write_all(head.as_bytes()).await.is_err() {
                                break;
                            }
                            for _ in 0..10 {
                                tokio::time::sleep(Duration::from_millis(80)).await;
                                if s.write_all(b"x").await.is_err() {
                                    break 'conn;
                                }
                            }
                            continue;
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{name}",
                            name.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            accepted,
            open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One keep-alive client connection speaking HTTP/1.1 by hand.
struct Client(TcpStream);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(TcpStream::connect(addr).await.expect("connect"))
    }

    /// Sends `GET path` and returns the status line and body of the answer.
    async fn get(&mut self, path: &str) -> (String, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: rc.example\r\n\r\n");
        self.0.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().expect("length"))
                    })
                    .unwrap_or(0);
                if buf.len() >= p + 4 + len {
                    let body = String::from_utf8_lossy(&buf[p + 4..p + 4 + len]).to_string();
                    let status = head.lines().next().unwrap_or_default().to_string();
                    return (status, body);
                }
            }
            assert!(Instant::now() < deadline, "no answer within 10 s");
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut chunk))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "the shim closed the client connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_connection_keeps_one_upstream_connection_for_all_its_requests() {
    let up = Upstream::start("a").await;
    let shim = server::start(base_config(&up.url())).await.expect("start");
    let mut c = Client::connect(shim.addr).await;
    for i in 0..50 {
        let (status, body) = c.get(&format!("/api/v1/info?i={i}")).await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "a"));
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for 50 requests"
    );
}

#[tokio::test]
async fn an_idle_kept_connection_is_closed_after_pool_idle_timeout() {
    let up = Upstream::start("a").await;
    let mut config = base_config(&up.url());
    config.upstream.pool_idle_timeout = Duration::from_millis(300);
    let shim = server::start(config).await.expect("start");
    let mut c = Client::connect(shim.addr).await;
    assert_eq!(c.get("/x").await.1, "a");
    assert_eq!(up.open.load(Ordering::SeqCst), 1);
    // The client connection stays open (its own head deadline is 10 s); the upstream one goes.
    let t = Instant::now();
    eventually(
        "the idle upstream connection closed",
        Duration::from_secs(3),
        || up.open.load(Ordering::SeqCst) == 0,
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed early: {:?}",
        t.elapsed()
    );
    // The same client connection goes on, on a new upstream connection.
    assert_eq!(c.get("/y").await.1, "a");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_streaming_longer_than_pool_idle_timeout_is_not_cut() {
    let up = Upstream::start("a").await;
    let mut config = base_config(&up.url());
    config.upstream.pool_idle_timeout = Duration::from_millis(200);
    let shim = server::start(config).await.expect("start");
    let mut c = Client::connect(shim.addr).await;
    assert_eq!(c.get("/x").await.1, "a");
    // Idle long enough for the idle timer to be due, then a body that takes 800 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, body) = c.get("/slow").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "xxxxxxxxxx")
    );
    assert_eq!(c.get("/x").await.1, "a");
}

#[tokio::test]
async fn after_a_reload_to_another_upstream_the_kept_connection_is_not_used() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let shim = server::start(base_config(&a.url())).await.expect("start");
    let mut c = Client::connect(shim.addr).await;
    assert_eq!(c.get("/x").await.1, "a");
    shim.reload(base_config(&b.url())).expect("reload");
    assert_eq!(
        c.get("/x").await.1,
        "b",
        "the same client connection now reaches b"
    );
    eventually("a's connection closed", Duration::from_secs(3), || {
        a.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn idle_kept_connections_give_their_place_back_at_the_cap() {
    let up = Upstream::start("a").await;
    let mut config = base_config(&up.url());
    config.upstream.max_connections = 4;
    let shim = server::start(config).await.expect("start");
    // Eight client connections, all kept alive after one request each: past the fourth, each
    // new one is served at once by closing an idle kept connection (not after
    // connect_timeout, not a 503).
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(shim.addr).await;
        let t = Instant::now();
        let (status, body) = c.get("/x").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "a"),
            "client {i}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "client {i} waited {:?}",
            t.elapsed()
        );
        clients.push(c);
    }
    let open = up.open.load(Ordering::SeqCst);
    assert!(open <= 4, "{open} upstream connections open, cap 4");
    for (i, c) in clients.iter_mut().enumerate() {
        let t = Instant::now();
        assert_eq!(c.get("/y").await.0, "HTTP/1.1 200 OK", "client {i}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "client {i} waited {:?}",
            t.elapsed()
        );
    }
    // The pool's users are not starved by idle client connections either: an HTTP/2 client
    // (served by the pool) gets a connection at once.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let t = Instant::now();
    let r = h2
        .get(format!("http://{}/z", shim.addr))
        .send()
        .await
        .expect("h2");
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "h2 waited {:?}",
        t.elapsed()
    );
    let open = up.open.load(Ordering::SeqCst);
    assert!(open <= 4, "{open} upstream connections open, cap 4");
}

#[tokio::test]
async fn a_connect_waiting_at_the_cap_gets_a_kept_connection_that_goes_idle() {
    let up = Upstream::start("a").await;
    let mut config = base_config(&up.url());
    config.upstream.max_connections = 1;
    config.upstream.connect_timeout = Duration::from_secs(2);
    let shim = server::start(config).await.expect("start");
    // A holds the only connection while its 800 ms answer streams; B asks meanwhile and must
    // be served once A's connection is idle, not refused after connect_timeout.
    let mut a = Client::connect(shim.addr).await;
    let slow = tokio::spawn(async move {
        let r = a.get("/slow").await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = Client::connect(shim.addr).await;
    let t = Instant::now();
    let (status, body) = b.get("/x").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "a"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "waited {:?}",
        t.elapsed()
    );
    let (_a, (status, _)) = slow.await.expect("a");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_pool_idle_timeout_too_large_to_add_is_served() {
    let up = Upstream::start("a").await;
    let mut config = base_config(&up.url());
    config.upstream.pool_idle_timeout = Duration::from_secs(u64::MAX / 2);
    let shim = server::start(config).await.expect("start");
    let mut c = Client::connect(shim.addr).await;
    assert_eq!(c.get("/x").await.1, "a");
    assert_eq!(c.get("/x").await.1, "a");
}
