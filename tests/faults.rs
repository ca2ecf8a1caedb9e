//! Upstream faults (issue 7, spec/shim.md §7): a refused connection, a hang or a slow head,
//! a reset or a close in the middle of a body, garbage instead of HTTP, an oversized response
//! head, keep-alive connections the upstream drops, and an upstream restarting under load.
//!
//! Each test checks the status and exact body the client gets, the metric and the log line
//! the shim leaves, and that the next request is served. Faults the stand-in has no mode for
//! are played by a small raw-TCP upstream defined here ([`RawUpstream`]).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rocketchat_shim::config::Config;
use rocketchat_shim::server::{self, Running};
use rocketchat_standin::{Fault, Seed, Standin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UNREACHABLE: &str = r#"{"success":false,"error":"The upstream server could not be reached [error-bad-gateway]","errorType":"error-bad-gateway"}"#;
const BROKE: &str = r#"{"success":false,"error":"The upstream server broke the connection [error-bad-gateway]","errorType":"error-bad-gateway"}"#;
const TIMED_OUT: &str = r#"{"success":false,"error":"The upstream server did not answer in time [error-gateway-timeout]","errorType":"error-gateway-timeout"}"#;
const KINDS: [&str; 5] = ["connect", "timeout", "protocol", "reset", "request"];

// ---- log capture -----------------------------------------------------------------------------

/// The JSON log lines written while the guard is alive. `#[tokio::test]` runs everything of
/// a test (the shim's tasks included) on the test's thread, so a thread-local subscriber
/// sees all of it and nothing of the tests running beside it.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }

    /// Asserts a warning line containing every one of `needles`.
    fn assert_line(&self, needles: &[&str]) {
        let text = self.text();
        assert!(
            text.lines()
                .any(|l| l.contains("\"WARN\"") && needles.iter().all(|n| l.contains(n))),
            "no WARN log line with {needles:?} in:\n{text}"
        );
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

// ---- helpers ---------------------------------------------------------------------------------

/// A shim in front of `upstream` (a URL), configured by `tweak`.
async fn shim_for(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = base_config(upstream);
    tweak(&mut config);
    server::start(config).await.expect("shim starts")
}

/// Every upstream error counter of `shim`, in the order of [`KINDS`].
fn error_counts(shim: &Running) -> [u64; 5] {
    KINDS.map(|k| shim.app.metrics.upstream_errors(k))
}

/// Asserts that exactly `want` (kind, count) upstream errors were counted, and no other.
fn assert_errors(shim: &Running, want: &[(&str, u64)]) {
    let expected = KINDS.map(|k| {
        want.iter()
            .find(|(w, _)| *w == k)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    });
    assert_eq!(
        error_counts(shim),
        expected,
        "upstream errors by kind {KINDS:?}"
    );
}

/// `GET url` -> (status, body text).
async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// The shim's `/metrics` line for one upstream error kind.
async fn metric_line(shim: &Running, kind: &str) -> String {
    let text = metrics_text(shim.admin_addr.expect("admin on")).await;
    let name = format!("rcshim_upstream_errors_total{{kind=\"{kind}\"}}");
    let value = metric_value(&text, &name).unwrap_or_else(|| panic!("no {name} in /metrics"));
    format!("{name} {value}")
}

/// The next request is served normally, with the stand-in's own answer.
async fn assert_served(url: &str) {
    let (status, body) = get(&format!("{url}/api/info")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["success"], true, "{body}");
}

// ---- stand-in fault modes --------------------------------------------------------------------

#[tokio::test]
async fn refused_connection_is_502_then_served_once_the_upstream_listens() {
    let (logs, _guard) = Logs::capture();
    let port = dead_port();
    let shim = shim_for(&format!("http://127.0.0.1:{port}"), |_| {}).await;
    let url = format!("http://{}", shim.addr);

    let r = client()
        .get(format!("{url}/api/info"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.expect("body"), UNREACHABLE);
    // A request with a body is refused the same way, its body unread by anyone.
    let r = client()
        .post(format!("{url}/_standin/upload"))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.expect("body"), UNREACHABLE);
    assert_errors(&shim, &[("connect", 2)]);
    assert_eq!(
        metric_line(&shim, "connect").await,
        "rcshim_upstream_errors_total{kind=\"connect\"} 2"
    );
    logs.assert_line(&["upstream request failed", "\"kind\":\"connect\""]);

    // The upstream comes up on that port: the very next request is served.
    let standin = Standin::start_on(SocketAddr::from(([127, 0, 0, 1], port)), Seed::default())
        .await
        .expect("stand-in on the dead port");
    assert_served(&url).await;
    assert_eq!(standin.count_path("/api/info"), 1);
    assert_errors(&shim, &[("connect", 2)]);
}

#[tokio::test]
async fn hang_before_head_is_504_without_a_retry_then_served() {
    let (logs, _guard) = Logs::capture();
    let p = start(|c| c.upstream.response_timeout = Duration::from_millis(300)).await;
    p.standin.set_fault(Fault::HangBeforeHead);
    let started = Instant::now();
    let (status, body) = get(&format!("{}/api/info", p.url())).await;
    assert_eq!((status, body.as_str()), (504, TIMED_OUT));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A POST that times out was sent once, and is never sent again.
    let r = client()
        .post(format!("{}/_standin/upload", p.url()))
        .body("pay once")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504);
    assert_eq!(r.text().await.expect("body"), TIMED_OUT);
    assert_errors(&p.shim, &[("timeout", 2)]);
    assert_eq!(
        metric_line(&p.shim, "timeout").await,
        "rcshim_upstream_errors_total{kind=\"timeout\"} 2"
    );
    logs.assert_line(&["upstream request failed", "\"kind\":\"timeout\""]);

    p.standin.set_fault(Fault::None);
    assert_served(&p.url()).await;
    assert_eq!(p.standin.count_path("/_standin/upload"), 1);
    assert_eq!(p.standin.count_path("/api/info"), 2);
}

#[tokio::test]
async fn slow_head_within_the_timeout_is_served() {
    let p = start(|c| c.upstream.response_timeout = Duration::from_secs(3)).await;
    p.standin
        .set_fault(Fault::SlowHead(Duration::from_millis(400)));
    let started = Instant::now();
    assert_served(&p.url()).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_errors(&p.shim, &[]);
    p.standin.set_fault(Fault::None);
    assert_served(&p.url()).await;
}

/// The head went out as the upstream sent it (200, `Content-Length: 1000000`); the body is
/// then cut. The client must see an incomplete response, never a short one that looks whole.
#[tokio::test]
async fn reset_mid_body_cuts_the_client_response_and_is_counted() {
    let (logs, _guard) = Logs::capture();
    let p = start(|_| {}).await;
    p.standin.set_fault(Fault::ResetMidBody);

    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000000");
    assert!(r.bytes().await.is_err(), "a cut body read as complete");

    // On the wire: the announced length, fewer bytes, then the connection ends.
    let answer = raw_bytes(
        p.shim.addr,
        b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let (head, body) = split_head(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 1000000"),
        "{head}"
    );
    assert!(
        !body.is_empty() && body.len() < 1_000_000,
        "{} body bytes",
        body.len()
    );

    wait_for(|| p.shim.app.metrics.upstream_errors("reset") == 2).await;
    assert_errors(&p.shim, &[("reset", 2)]);
    logs.assert_line(&["mid-body", "\"kind\":\"reset\""]);

    p.standin.set_fault(Fault::None);
    assert_served(&p.url()).await;
    assert_errors(&p.shim, &[("reset", 2)]);
}

#[tokio::test]
async fn close_after_head_is_a_cut_response_and_is_counted() {
    let p = start(|_| {}).await;
    p.standin.set_fault(Fault::CloseAfterHead);
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert!(r.bytes().await.is_err(), "a cut body read as complete");
    wait_for(|| p.shim.app.metrics.upstream_errors("reset") == 1).await;
    assert_errors(&p.shim, &[("reset", 1)]);
    p.standin.set_fault(Fault::None);
    assert_served(&p.url()).await;
}

#[tokio::test]
async fn garbage_instead_of_http_is_502_sent_once() {
    let (logs, _guard) = Logs::capture();
    let p = start(|_| {}).await;
    p.standin.set_fault(Fault::Garbage);
    let (status, body) = get(&format!("{}/api/info", p.url())).await;
    assert_eq!((status, body.as_str()), (502, BROKE));
    assert_errors(&p.shim, &[("protocol", 1)]);
    assert_eq!(
        metric_line(&p.shim, "protocol").await,
        "rcshim_upstream_errors_total{kind=\"protocol\"} 1"
    );
    logs.assert_line(&["upstream request failed", "\"kind\":\"protocol\""]);
    // The garbage answer came on a fresh connection: no retry, one request upstream.
    assert_eq!(p.standin.count_path("/api/info"), 1);
    p.standin.set_fault(Fault::None);
    assert_served(&p.url()).await;
    assert_eq!(p.standin.count_path("/api/info"), 2);
}

/// The intercepted endpoint reads its upstream answer itself; a timeout or a cut body there
/// is Rocket.Chat-shaped, counted, and does not poison the cache.
#[tokio::test]
async fn intercepted_endpoint_upstream_faults_are_counted() {
    let p = start(|c| c.upstream.response_timeout = Duration::from_millis(400)).await;
    let ep = format!(
        "{}/api/v1/im.messages.others?roomId=alice-idbob-id",
        p.url()
    );
    p.standin
        .set_delay("/api/v1/im.messages.others", Duration::from_secs(2));
    let r = admin(client().get(&ep)).send().await.expect("send");
    assert_eq!(r.status(), 504);
    assert_eq!(r.text().await.expect("body"), TIMED_OUT);
    assert_errors(&p.shim, &[("timeout", 1)]);
    p.standin
        .set_delay("/api/v1/im.messages.others", Duration::ZERO);
    let r = admin(client().get(&ep)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["success"], true);
    assert_errors(&p.shim, &[("timeout", 1)]);
}

// ---- raw upstreams for the faults the stand-in has no mode for ------------------------------

/// What a [`RawUpstream`] does with the requests it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answer `200 ok` with keep-alive; close a connection after it was idle this long.
    IdleClose(Duration),
    /// Answer `200 ok` advertising keep-alive, then close the connection at once.
    CloseAfterAnswer,
    /// Answer the first request of a connection; read the second, then reset the
    /// connection without answering (the request was sent, and is lost).
    ResetSecondRequest,
    /// Per path: `/big-head` gets a 600 KB response head, `/many-headers` 300 header
    /// lines, anything else `200 ok`.
    BadHeads,
}

/// A request as a raw upstream read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    conn: usize,
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 upstream written on raw sockets, counting connections and requests.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(behaviour: Behaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(raw_connection(stream, conn, behaviour, s.clone()));
            }
        });
        RawUpstream {
            addr,
            connections,
            seen,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// `(method, path)` of every request read, in order.
    fn requests(&self) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .map(|s| (s.method, s.path))
            .collect()
    }
}

/// Reads one request (head, then a `Content-Length` body) from `stream`; `None` at EOF.
/// Fails the test on anything but `Content-Length` framing: the shim sends nothing else here.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    idle: Option<Duration>,
) -> Option<(String, String, Vec<u8>)> {
    let mut tmp = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let read = match idle {
            Some(d) => match tokio::time::timeout(d, stream.read(&mut tmp)).await {
                Ok(r) => r,
                Err(_) => return None,
            },
            None => stream.read(&mut tmp).await,
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("transfer-encoding"),
        "unexpected framing: {head}"
    );
    let len: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((method, path, body))
}

const OK_KEEP_ALIVE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nok";

async fn raw_connection(
    mut stream: TcpStream,
    conn: usize,
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let idle = match behaviour {
        Behaviour::IdleClose(d) => Some(d),
        _ => None,
    };
    let mut served = 0usize;
    while let Some((method, path, body)) = read_request(&mut stream, &mut buf, idle).await {
        seen.lock().expect("seen").push(Seen {
            conn,
            method,
            path: path.clone(),
            body,
        });
        served += 1;
        match behaviour {
            Behaviour::IdleClose(_) => {
                if stream.write_all(OK_KEEP_ALIVE).await.is_err() {
                    return;
                }
            }
            Behaviour::CloseAfterAnswer => {
                let _ = stream.write_all(OK_KEEP_ALIVE).await;
                return;
            }
            Behaviour::ResetSecondRequest => {
                if served >= 2 {
                    let _ = stream.set_zero_linger();
                    return;
                }
                if stream.write_all(OK_KEEP_ALIVE).await.is_err() {
                    return;
                }
            }
            Behaviour::BadHeads => {
                let answer = match path.as_str() {
                    "/big-head" => {
                        let mut a = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
                        a.extend_from_slice(&vec![b'a'; 600 * 1024]);
                        a.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
                        a
                    }
                    "/many-headers" => {
                        let mut a = b"HTTP/1.1 200 OK\r\n".to_vec();
                        for i in 0..300 {
                            a.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
                        }
                        a.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
                        a
                    }
                    _ => OK_KEEP_ALIVE.to_vec(),
                };
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn oversized_response_heads_are_502() {
    let (logs, _guard) = Logs::capture();
    let up = RawUpstream::start(Behaviour::BadHeads).await;
    let shim = shim_for(&up.url(), |_| {}).await;
    let url = format!("http://{}", shim.addr);
    for path in ["/big-head", "/many-headers"] {
        let (status, body) = get(&format!("{url}{path}")).await;
        assert_eq!((status, body.as_str()), (502, BROKE), "{path}");
    }
    assert_errors(&shim, &[("protocol", 2)]);
    logs.assert_line(&["upstream request failed", "\"kind\":\"protocol\""]);
    // Each bad answer was asked for once; the next request is served.
    let (status, body) = get(&format!("{url}/fine")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        up.requests(),
        [
            ("GET", "/big-head"),
            ("GET", "/many-headers"),
            ("GET", "/fine")
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
    );
}

/// The upstream closes keep-alive connections after 100 ms of idleness (as Node does after
/// its `keepAliveTimeout`). A request after that must not be lost on the dead connection:
/// it goes out once, on a new one, GET or POST alike.
#[tokio::test]
async fn keep_alive_connection_closed_while_idle_is_not_reused() {
    let up = RawUpstream::start(Behaviour::IdleClose(Duration::from_millis(100))).await;
    let shim = shim_for(&up.url(), |_| {}).await;
    let url = format!("http://{}", shim.addr);
    let c = client();

    // Well within the idle time, the pooled connection is reused (so the counts below mean
    // something).
    for path in ["/a", "/b"] {
        let r = c.get(format!("{url}{path}")).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok");
        settle().await;
    }
    assert_eq!(up.connections(), 1, "the pool did not reuse the connection");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.get(format!("{url}/c")).send().await.expect("send");
    assert_eq!(
        (r.status().as_u16(), r.text().await.expect("body")),
        (200, "ok".into())
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c
        .post(format!("{url}/pay"))
        .body("once")
        .send()
        .await
        .expect("send");
    assert_eq!(
        (r.status().as_u16(), r.text().await.expect("body")),
        (200, "ok".into())
    );

    assert_eq!(
        up.requests(),
        [
            ("GET", "/a"),
            ("GET", "/b"),
            ("GET", "/c"),
            ("POST", "/pay")
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
    );
    assert_eq!(up.seen()[3].body, b"once");
    assert_eq!(up.connections(), 3);
    assert_errors(&shim, &[]);
}

/// The upstream advertises keep-alive but closes each connection right after its answer,
/// so the next request meets a connection that is already gone. Nothing was sent on it, so
/// it goes out (once) on a new connection: every request is served and seen exactly once.
#[tokio::test]
async fn keep_alive_connection_closed_right_after_the_answer_costs_nothing() {
    let up = RawUpstream::start(Behaviour::CloseAfterAnswer).await;
    let shim = shim_for(&up.url(), |_| {}).await;
    let url = format!("http://{}", shim.addr);
    let c = client();
    let mut want = Vec::new();
    for i in 0..20 {
        let (method, path) = if i % 2 == 0 {
            ("GET", format!("/g{i}"))
        } else {
            ("POST", format!("/p{i}"))
        };
        let rb = if method == "GET" {
            c.get(format!("{url}{path}"))
        } else {
            c.post(format!("{url}{path}")).body(format!("body {i}"))
        };
        let r = rb.send().await.expect("send");
        assert_eq!(r.status(), 200, "{method} {path}");
        assert_eq!(r.text().await.expect("body"), "ok");
        want.push((method.to_owned(), path));
    }
    assert_eq!(up.requests(), want);
    assert_errors(&shim, &[]);
}

/// The upstream reads a request on a reused connection and then drops the connection without
/// an answer. The request was sent, so it is not retried: not the POST (never resent), and
/// not the GET either. Each gets the 502 and reaches the upstream exactly once.
#[tokio::test]
async fn request_lost_on_a_reused_connection_is_not_retried() {
    let (logs, _guard) = Logs::capture();
    let up = RawUpstream::start(Behaviour::ResetSecondRequest).await;
    let shim = shim_for(&up.url(), |_| {}).await;
    let url = format!("http://{}", shim.addr);
    let c = client();

    // Between requests the pool gets its connection back (20 ms, far from any timeout).
    let cases: [(&str, &str, u16, &str); 5] = [
        ("GET", "/warm1", 200, "ok"),
        ("POST", "/pay", 502, BROKE),
        ("GET", "/warm2", 200, "ok"),
        ("GET", "/read", 502, BROKE),
        ("GET", "/after", 200, "ok"),
    ];
    for (method, path, status, body) in cases {
        let rb = match method {
            "POST" => c.post(format!("{url}{path}")).body("once"),
            _ => c.get(format!("{url}{path}")),
        };
        let r = rb.send().await.expect("send");
        assert_eq!(
            (r.status().as_u16(), r.text().await.expect("body").as_str()),
            (status, body),
            "{method} {path}"
        );
        settle().await;
    }

    let seen = up.seen();
    let got: Vec<(usize, &str, &str)> = seen
        .iter()
        .map(|s| (s.conn, s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "GET", "/warm1"),
            (1, "POST", "/pay"),
            (2, "GET", "/warm2"),
            (2, "GET", "/read"),
            (3, "GET", "/after"),
        ]
    );
    assert_eq!(up.connections(), 3);
    assert_errors(&shim, &[("protocol", 2)]);
    logs.assert_line(&["upstream request failed", "\"kind\":\"protocol\""]);
}

// ---- the upstream restarting under load ------------------------------------------------------

/// One request of the load loop.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    status: u16,
    body: String,
}

#[tokio::test]
async fn upstream_restart_under_load_is_502_in_the_gap_then_200() {
    let p = start(|c| {
        c.upstream.connect_timeout = Duration::from_millis(500);
        c.upstream.response_timeout = Duration::from_secs(5);
    })
    .await;
    let Pair { standin, shim } = p;
    let upstream_addr = standin.addr();
    let url = format!("http://{}/api/info", shim.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, outcomes, url) = (stop.clone(), outcomes.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = c.get(&url).send().await.expect("the shim always answers");
                let status = r.status().as_u16();
                let body = r.text().await.expect("the shim's body is whole");
                outcomes.lock().expect("outcomes").push(Outcome {
                    started,
                    status,
                    body,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    standin.shutdown().await;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let restarted = Standin::start_on(upstream_addr, Seed::default())
        .await
        .expect("restart on the same port");
    let up = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    let mut before = 0;
    let mut gap = 0;
    let mut after = 0;
    for o in &outcomes {
        match o.status {
            200 => assert!(o.body.contains("\"success\":true"), "{o:?}"),
            502 => assert!(o.body == UNREACHABLE || o.body == BROKE, "{o:?}"),
            _ => panic!("unexpected answer during the restart: {o:?}"),
        }
        if o.started + Duration::from_millis(100) < stopping {
            // Well before the stop: served.
            assert_eq!(o.status, 200, "{o:?}");
            before += 1;
        } else if o.started > down && o.started + Duration::from_millis(50) < up {
            assert_eq!(o.status, 502, "a request in the gap: {o:?}");
            gap += 1;
        } else if o.started > up + Duration::from_millis(50) {
            assert_eq!(o.status, 200, "a request after the restart: {o:?}");
            after += 1;
        }
    }
    assert!(before > 0 && gap > 0 && after > 0, "{before} {gap} {after}");
    assert!(shim.app.metrics.upstream_errors("connect") > 0);
    assert!(restarted.count_path("/api/info") >= after);
}

// ---- small helpers ---------------------------------------------------------------------------

/// Lets a finished exchange's upstream connection go back to the pool.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Waits (up to 5 s) for `cond`.
async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`common::raw`], as bytes.
async fn raw_bytes(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A raw answer split into its head (as text) and its body bytes.
fn split_head(answer: &[u8]) -> (String, &[u8]) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(answer.len());
    (
        String::from_utf8_lossy(&answer[..end]).into_owned(),
        &answer[end..],
    )
}
