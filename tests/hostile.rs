//! Hostile clients (issue 7, spec/shim.md §7): framing and smuggling attempts on raw sockets,
//! odd request targets, over-long request lines, slowloris, and WebSocket abuse.
//!
//! Every framing case is refused or normalised, and the stand-in's request record shows
//! exactly what reached the upstream: nothing for a refused request, and for a normalised one
//! the one request the shim understood, never a second, smuggled one.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::RecordedRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const CL_TE: &str = r#"{"success":false,"error":"The request has both Content-Length and Transfer-Encoding [error-bad-request]","errorType":"error-bad-request"}"#;
const BAD_BODY: &str = r#"{"success":false,"error":"The request body is malformed or incomplete [error-bad-request]","errorType":"error-bad-request"}"#;
const NOT_A_PATH: &str = r#"{"success":false,"error":"The request target is not a path [error-bad-request]","errorType":"error-bad-request"}"#;
const TWO_HOSTS: &str = r#"{"success":false,"error":"The request has more than one Host header [error-bad-request]","errorType":"error-bad-request"}"#;
const TOO_LARGE: &str = r#"{"success":false,"error":"The request head is larger than this server accepts [error-request-header-too-large]","errorType":"error-request-header-too-large"}"#;
const NOT_LOGGED_IN: &str = r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#;

/// How long a raw exchange waits for more bytes before it stops reading.
const WAIT: Duration = Duration::from_millis(300);

/// Sends `bytes`, returns the answer and what the stand-in recorded for it.
async fn exchange(p: &Pair, bytes: &[u8]) -> (String, Vec<RecordedRequest>) {
    p.standin.clear_requests();
    let answer = raw(p.shim.addr, bytes, WAIT).await;
    (answer, p.standin.requests())
}

/// The number of HTTP responses in a raw answer.
fn responses(answer: &str) -> usize {
    answer.matches("HTTP/1.1 ").count()
}

// ---- refused framings ------------------------------------------------------------------------

/// Each request is refused, with the shim's own JSON body (`Some`) or hyper's bare 400 for a
/// head it cannot parse (`None`), and none reaches the upstream. Where the framing is in
/// doubt, a request is pipelined behind it: the connection is closed, so that request is
/// never read (a reader that guessed the framing differently would see it as a smuggled
/// one). Refusals of a well-framed head (two Hosts, `*`, CONNECT) keep the connection, so
/// nothing is pipelined behind them.
#[tokio::test]
async fn conflicting_or_malformed_framing_is_refused_before_the_upstream() {
    let p = start(|_| {}).await;
    let trailing = "GET /_standin/echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (name, request, status, the shim's body or hyper's empty one)
    let cases: &[(&str, String, u16, Option<&str>)] = &[
        (
            "CL + TE (TE last in a list)",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            Some(CL_TE),
        ),
        (
            "TE: chunked, identity",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "TE with a space before the colon, and CL",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc".into(),
            400,
            None,
        ),
        (
            "TE with a space before the colon alone",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "TE: xchunked",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "two Transfer-Encoding lines",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "TE in HTTP/1.0",
            "POST /_standin/echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "two different Content-Lengths",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
            400,
            None,
        ),
        (
            "a Content-Length list",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd".into(),
            400,
            None,
        ),
        (
            "a signed Content-Length",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into(),
            400,
            None,
        ),
        (
            "obsolete line folding",
            "GET /_standin/echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "Transfer-Encoding hidden in a folded line",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc".into(),
            400,
            None,
        ),
        (
            "CR inside a header value",
            "GET /_standin/echo HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "NUL inside a header value",
            "GET /_standin/echo HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "a space before the colon of Host",
            "GET /_standin/echo HTTP/1.1\r\nHost : x\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "two Host lines",
            "GET /_standin/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            400,
            Some(TWO_HOSTS),
        ),
        (
            "an HTTP/0.9 request line",
            "GET /_standin/echo\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            Some(NOT_A_PATH),
        ),
        (
            "CONNECT (authority form)",
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".into(),
            400,
            Some(NOT_A_PATH),
        ),
        (
            "a bad chunk size",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(),
            400,
            Some(BAD_BODY),
        ),
        (
            "a negative chunk size",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n".into(),
            400,
            Some(BAD_BODY),
        ),
        (
            "a chunk size beyond 64 bits",
            "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc\r\n0\r\n\r\n".into(),
            400,
            Some(BAD_BODY),
        ),
    ];
    let well_framed = ["two Host lines", "OPTIONS *", "CONNECT (authority form)"];
    for (name, request, status, body) in cases {
        let bytes = if well_framed.contains(name) {
            request.clone()
        } else {
            format!("{request}{trailing}")
        };
        let (answer, upstream) = exchange(&p, bytes.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {answer}"
        );
        match body {
            Some(b) => assert_eq!(raw_body(&answer), *b, "{name}"),
            None => assert_eq!(raw_body(&answer), "", "{name}"),
        }
        assert_eq!(
            responses(&answer),
            1,
            "{name}: more than one answer: {answer}"
        );
        assert!(
            upstream.is_empty(),
            "{name}: reached the upstream: {upstream:?}"
        );
    }
    for kind in ["connect", "timeout", "protocol", "reset", "request"] {
        assert_eq!(p.shim.app.metrics.upstream_errors(kind), 0, "{kind}");
    }
    // The shim is unharmed.
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

/// A chunked body that turns bad after a good chunk: the head and the good bytes may already
/// be upstream, but the upstream never gets a complete request (the shim aborts the
/// connection), the client gets the 400, and nothing after it is read.
#[tokio::test]
async fn a_chunked_body_that_turns_bad_midway_never_completes_upstream() {
    let p = start(|_| {}).await;
    let (answer, upstream) = exchange(
        &p,
        b"POST /_standin/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nGET /_standin/echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(raw_body(&answer), BAD_BODY);
    assert_eq!(responses(&answer), 1, "{answer}");
    assert!(upstream.len() <= 1, "{upstream:?}");
    for r in &upstream {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/_standin/upload")
        );
        assert!(r.body_len <= 3, "{r:?}");
    }
    assert_eq!(p.standin.count_path("/_standin/echo"), 0);
}

/// The classic smuggling write: a request with both framings and a second request behind it
/// in the same packet. Refused whole; the connection is closed, so the hidden request is
/// never read, let alone forwarded.
#[tokio::test]
async fn pipelined_smuggling_attempt_is_refused_and_nothing_is_forwarded() {
    let p = start(|_| {}).await;
    for smuggle in [
        // CL.TE: a CL-reader sees one 44-byte body; a TE-reader sees an empty body and then
        // `GET /admin-smuggled`.
        "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin-smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        // TE.CL: the reverse.
        "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2c\r\nGET /admin-smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ] {
        let bytes = format!("{smuggle}GET /_standin/echo?third HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
        p.standin.clear_requests();
        s.write_all(bytes.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        // The shim closes the connection: read_to_end ends (well before the timeout).
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .expect("the connection was closed")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(raw_body(&answer), CL_TE);
        assert_eq!(responses(&answer), 1, "{answer}");
        assert!(
            p.standin.requests().is_empty(),
            "{:?}",
            p.standin.requests()
        );
    }
}

// ---- normalised requests ---------------------------------------------------------------------

/// What the upstream got: method, target, Host, body length.
fn summary(r: &RecordedRequest) -> (String, String, Option<String>, u64) {
    (
        r.method.clone(),
        r.target.clone(),
        r.header("host").map(str::to_owned),
        r.body_len,
    )
}

fn want(method: &str, target: &str, host: &str, len: u64) -> (String, String, Option<String>, u64) {
    (method.into(), target.into(), Some(host.into()), len)
}

/// Requests that are valid (if unusual) go upstream re-framed by the shim, and exactly as
/// the shim understood them: one request per request, never a second one hidden in a body.
#[tokio::test]
async fn unusual_but_valid_requests_are_normalised() {
    let p = start(|_| {}).await;

    // `identity, chunked`: chunked is final, so the body is chunked; upstream it is one
    // request with the 3 decoded bytes, re-framed by the shim.
    let (answer, up) = exchange(
        &p,
        b"POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        up.iter().map(summary).collect::<Vec<_>>(),
        [want("POST", "/_standin/echo", "x", 3)]
    );
    assert_eq!(up[0].header("transfer-encoding"), Some("chunked"));

    // Two equal Content-Lengths are one.
    let (answer, up) = exchange(
        &p,
        b"POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        up.iter().map(summary).collect::<Vec<_>>(),
        [want("POST", "/_standin/echo", "x", 3)]
    );
    let lengths: Vec<_> = up[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .collect();
    assert_eq!(lengths.len(), 1, "{:?}", up[0].headers);

    // A bare LF ends a line (RFC 9112 §2.2): `X-A: a\nX-B: b` is two fields, sent upstream
    // as two CRLF lines; nothing of it can hide a header from the shim.
    let (answer, up) = exchange(
        &p,
        b"GET /_standin/echo HTTP/1.1\nHost: x\nX-A: a\nX-B: b\n\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        up.iter().map(summary).collect::<Vec<_>>(),
        [want("GET", "/_standin/echo", "x", 0)]
    );
    assert_eq!(up[0].header("x-a"), Some("a"));
    assert_eq!(up[0].header("x-b"), Some("b"));

    // Absolute form: forwarded in origin form, Host kept.
    let (answer, up) = exchange(
        &p,
        b"GET http://evil.example/api/info?x=1 HTTP/1.1\r\nHost: chat.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        up.iter().map(summary).collect::<Vec<_>>(),
        [want("GET", "/api/info?x=1", "chat.example", 0)]
    );

    // Absolute form naming the intercepted endpoint is still the endpoint (no bypass).
    let (answer, up) = exchange(
        &p,
        b"GET http://evil.example/api/v1/im.messages.others?roomId=alice-idbob-id HTTP/1.1\r\nHost: chat.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert_eq!(raw_body(&answer), NOT_LOGGED_IN);
    assert!(up.is_empty(), "{up:?}");

    // A valid chunked request with a second request pipelined behind it: two requests, each
    // as sent.
    let (answer, up) = exchange(
        &p,
        b"POST /_standin/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /_standin/echo?second HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(responses(&answer), 2, "{answer}");
    assert_eq!(
        up.iter().map(summary).collect::<Vec<_>>(),
        [
            want("POST", "/_standin/echo", "x", 5),
            want("GET", "/_standin/echo?second", "x", 0)
        ]
    );
}

#[tokio::test]
async fn request_lines_over_the_limit_are_431_and_never_forwarded() {
    let p = start(|c| c.server.max_header_bytes = 8192).await;
    // Over max_header_bytes: the shim's own 431.
    let line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    let (answer, up) = exchange(&p, line.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(raw_body(&answer), TOO_LARGE);
    assert!(up.is_empty());
    // Grossly over (beyond hyper's buffer): hyper's bare 431, the connection closed.
    let line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1_000_000));
    let (answer, up) = exchange(&p, line.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(up.is_empty());
    // Many small header lines adding up past the limit are the same.
    let mut many = String::from("GET /api/info HTTP/1.1\r\nHost: x\r\n");
    for i in 0..90 {
        many.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(100)));
    }
    many.push_str("\r\n");
    let (answer, up) = exchange(&p, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(raw_body(&answer), TOO_LARGE);
    assert!(up.is_empty());
}

// ---- slowloris -------------------------------------------------------------------------------

/// 300 connections trickle a header line every 100 ms and never finish their heads, while a
/// normal client keeps asking. The normal requests are all served promptly; every slow
/// connection is cut once `header_read_timeout` (1 s) has passed; none of the slow requests
/// reaches the upstream. (`bench/slowloris.sh` runs the same against the binary with
/// Debian's `slowhttptest`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_while_normal_requests_are_served() {
    const SLOW: usize = 300;
    let p = start(|c| c.server.header_read_timeout = Duration::from_secs(1)).await;
    let addr = p.shim.addr;
    let cut = Arc::new(AtomicUsize::new(0));
    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let cut = cut.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("first line");
            let mut buf = [0u8; 256];
            // Trickle until the shim cuts the connection (EOF, a reset, or a failed write);
            // give up (and fail the test below) after 5 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            cut.fetch_add(1, Ordering::SeqCst);
                            return Instant::now();
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        let line = format!("X-Slow-{i}: {}\r\n", i % 10);
                        if s.write_all(line.as_bytes()).await.is_err() {
                            cut.fetch_add(1, Ordering::SeqCst);
                            return Instant::now();
                        }
                    }
                }
            }
            Instant::now()
        }));
    }

    // Normal traffic while the slow connections hang on.
    let c = client();
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    while opened.elapsed() < Duration::from_millis(2500) {
        let t = Instant::now();
        let r = c
            .get(format!("{}/api/info", p.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        slowest = slowest.max(t.elapsed());
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last_cut = opened;
    for h in slow {
        last_cut = last_cut.max(h.await.expect("slow client"));
    }
    assert_eq!(
        cut.load(Ordering::SeqCst),
        SLOW,
        "slow connections still open after 5 s"
    );
    assert!(
        last_cut.duration_since(opened) < Duration::from_secs(4),
        "cut after {:?}",
        last_cut.duration_since(opened)
    );
    assert!(served >= 20, "only {served} normal requests");
    assert!(
        slowest < Duration::from_secs(1),
        "a normal request took {slowest:?}"
    );
    assert_eq!(p.standin.count_path("/slowloris"), 0);
    assert_eq!(p.standin.count_path("/api/info"), served);
}

// ---- WebSocket abuse -------------------------------------------------------------------------

/// A raw upgrade-capable upstream: answers every request `101` and then echoes bytes; counts
/// the connections it has open.
struct TunnelUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TunnelUpstream {
    async fn start() -> TunnelUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                a.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 65536];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                o.fetch_sub(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let ok = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                        .await
                        .is_ok();
                    if ok {
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TunnelUpstream {
            addr,
            open,
            accepted,
            task,
        }
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Clients that vanish mid-tunnel (the TCP socket dropped, no close frame; some in the
/// middle of a frame) free everything: the shim's tunnels and the upstream's connections.
#[tokio::test]
async fn clients_vanishing_mid_tunnel_free_the_upstream_side() {
    const CLIENTS: usize = 20;
    let up = TunnelUpstream::start().await;
    let shim = rocketchat_shim::server::start(base_config(&format!("http://{}", up.addr)))
        .await
        .expect("shim");
    let mut sockets = Vec::new();
    for i in 0..CLIENTS {
        let mut s = TcpStream::connect(shim.addr).await.expect("connect");
        s.write_all(b"GET /websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .await
            .expect("upgrade");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the 101");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Bytes flow both ways through the tunnel.
        s.write_all(format!("ping {i}").as_bytes())
            .await
            .expect("write");
        let n = s.read(&mut buf).await.expect("echo");
        assert_eq!(&buf[..n], format!("ping {i}").as_bytes());
        if i % 2 == 0 {
            // Half a frame header and a partial payload, then gone.
            s.write_all(&[0x82, 0xfe, 0x10])
                .await
                .expect("partial frame");
        }
        sockets.push(s);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), CLIENTS);
    wait_until("all tunnels open", || {
        shim.app.metrics.open_tunnels() == CLIENTS as i64
    })
    .await;
    assert_eq!(up.open.load(Ordering::SeqCst), CLIENTS);

    // Vanish: half with a plain close, half with a reset.
    for (i, s) in sockets.into_iter().enumerate() {
        if i % 2 == 1 {
            s.set_zero_linger().expect("linger");
        }
        drop(s);
    }
    wait_until("tunnels closed", || shim.app.metrics.open_tunnels() == 0).await;
    wait_until("upstream connections closed", || {
        up.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// A 16 MiB binary frame and a 16 MiB text frame (tungstenite's default frame limit, which
/// the stand-in's echo uses) pass through the tunnel and back, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_megabyte_frames_pass_intact() {
    let p = start(|_| {}).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/websocket", p.shim.addr))
            .await
            .expect("ws connect");
    assert_eq!(resp.status(), 101);
    let big: Vec<u8> = (0..16usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into()))
        .await
        .expect("send 16 MiB");
    let echoed = ws.next().await.expect("reply").expect("ok").into_data();
    assert_eq!(echoed.len(), 16 << 20);
    assert!(
        echoed.as_ref() == big.as_slice(),
        "binary frame changed in transit"
    );

    let text: String = (0..16usize << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    ws.send(Message::Text(text.clone().into()))
        .await
        .expect("send text");
    match ws.next().await.expect("reply").expect("ok") {
        Message::Text(t) => assert!(t.as_str() == text, "text changed in transit"),
        other => panic!("not text: {:?}", other.len()),
    }
    // A clean closing handshake: the tunnel then ends without an error, and its byte counts
    // are recorded (a tunnel cut by a reset is not counted in tunnel_bytes_*).
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    wait_until("tunnel closed", || p.shim.app.metrics.open_tunnels() == 0).await;
    let c = p.shim.app.metrics.counters();
    assert!(c.tunnel_bytes_up.load(Ordering::Relaxed) >= 32 << 20);
    assert!(c.tunnel_bytes_down.load(Ordering::Relaxed) >= 32 << 20);
}
