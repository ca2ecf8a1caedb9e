//! The transparent proxy (spec/shim.md §7): bodies, headers, forwarding, request ids,
//! websockets, upstream failures, head limits, HTTP/2.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::Fault;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

#[tokio::test]
async fn bodies_are_byte_identical_both_ways() {
    let p = start(|_| {}).await;
    let c = client();
    let body = pattern(1_000_003);
    let digest = hex(&Sha256::digest(&body));
    let r = c
        .post(format!("{}/_standin/upload", p.url()))
        .body(body.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["bytes"], 1_000_003);
    assert_eq!(v["sha256"], digest);

    let got = c
        .get(format!("{}/_standin/bytes/777777", p.url()))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    let want: Vec<u8> = (0..777_777usize).map(|i| (i % 251) as u8).collect();
    assert_eq!(got.as_ref(), want.as_slice());

    // A chunked answer (no Content-Length) passes intact.
    let r = c
        .get(format!("{}/_standin/chunked", p.url()))
        .send()
        .await
        .expect("chunked");
    assert_eq!(r.status(), 200);
    let direct = c
        .get(format!("{}/_standin/chunked", p.standin.url()))
        .send()
        .await
        .expect("direct")
        .bytes()
        .await
        .expect("body");
    assert_eq!(r.bytes().await.expect("body"), direct);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn repeated_set_cookie_headers_are_kept() {
    let p = start(|_| {}).await;
    let r = client()
        .get(format!("{}/_standin/cookies", p.url()))
        .send()
        .await
        .expect("send");
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(cookies, vec!["a=1", "b=2", "c=3"]);
}

#[tokio::test]
async fn upstream_statuses_and_bodies_pass_unchanged() {
    let p = start(|_| {}).await;
    for code in [
        200u16, 201, 204, 301, 400, 401, 403, 404, 418, 500, 502, 503,
    ] {
        let r = client()
            .get(format!("{}/_standin/status/{code}", p.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), code);
        let direct = client()
            .get(format!("{}/_standin/status/{code}", p.standin.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.bytes().await.ok(),
            direct.bytes().await.ok(),
            "status {code}"
        );
    }
    // A Rocket.Chat error from another endpoint passes as is.
    let r = client()
        .get(format!("{}/api/v1/me", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#
    );
}

#[tokio::test]
async fn hop_by_hop_headers_never_reach_the_upstream() {
    let p = start(|_| {}).await;
    let req = "GET /_standin/echo HTTP/1.1\r\nHost: chat.example\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Keep: yes\r\nX-Keep: again\r\n\r\n";
    let answer = raw(p.shim.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rec = p
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/_standin/echo")
        .expect("recorded");
    for h in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            rec.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            rec.headers
        );
    }
    let keeps: Vec<_> = rec
        .headers
        .iter()
        .filter(|(n, _)| n == "x-keep")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(keeps, vec!["yes", "again"]);
    assert_eq!(rec.header("host"), Some("chat.example"));
}

#[tokio::test]
async fn forwarding_headers_for_an_untrusted_peer() {
    let p = start(|_| {}).await;
    let r = client()
        .get(format!("{}/_standin/echo", p.url()))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(rec.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        rec.header("x-forwarded-host"),
        Some(p.shim.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn forwarding_headers_for_a_trusted_peer() {
    let p = start(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")]).await;
    let r = client()
        .get(format!("{}/_standin/echo", p.url()))
        .header("X-Forwarded-For", "6.6.6.6, 1.2.3.4")
        .header("X-Real-IP", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(
        rec.header("x-forwarded-for"),
        Some("6.6.6.6, 1.2.3.4, 127.0.0.1")
    );
    // The rightmost untrusted entry, never the client's chosen X-Real-IP.
    assert_eq!(rec.header("x-real-ip"), Some("1.2.3.4"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn request_id_is_kept_or_made_and_returned() {
    let p = start(|_| {}).await;
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .header("X-Request-Id", "trace-42")
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    assert_eq!(
        p.standin
            .requests()
            .last()
            .and_then(|r| r.header("x-request-id").map(str::to_owned))
            .as_deref(),
        Some("trace-42")
    );
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    let made = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(
        p.standin
            .requests()
            .last()
            .and_then(|r| r.header("x-request-id").map(str::to_owned)),
        Some(made)
    );
}

async fn ws_echo(url: &str) {
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("hello rocket".into()))
        .await
        .expect("send text");
    let m = ws.next().await.expect("reply").expect("ok");
    assert_eq!(m, Message::Text("hello rocket".into()));
    let big = pattern(1 << 20);
    ws.send(Message::Binary(big.clone().into()))
        .await
        .expect("send binary");
    let m = ws.next().await.expect("reply").expect("ok");
    assert_eq!(m.into_data().as_ref(), big.as_slice());
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn websocket_echo_through_websocket_and_sockjs() {
    let p = start(|_| {}).await;
    let base = format!("ws://{}", p.shim.addr);
    ws_echo(&format!("{base}/websocket")).await;
    ws_echo(&format!("{base}/sockjs/123/abcdefgh/websocket")).await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_with_rocketchat_body() {
    let p = start(|c| {
        c.upstream.url = rocketchat_shim::config::parse_upstream_url(&format!(
            "http://127.0.0.1:{}",
            dead_port()
        ))
        .expect("url");
    })
    .await;
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"The upstream server could not be reached [error-bad-gateway]","errorType":"error-bad-gateway"}"#
    );
    assert_eq!(p.shim.app.metrics.upstream_errors("connect"), 1);
}

#[tokio::test]
async fn silent_upstream_is_504_after_response_timeout() {
    let p = start(|c| c.upstream.response_timeout = Duration::from_millis(300)).await;
    p.standin.set_fault(Fault::HangBeforeHead);
    let started = std::time::Instant::now();
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"The upstream server did not answer in time [error-gateway-timeout]","errorType":"error-gateway-timeout"}"#
    );
    // The shim keeps serving.
    p.standin.set_fault(Fault::None);
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversized_head_is_431_and_never_forwarded() {
    let p = start(|c| c.server.max_header_bytes = 4096).await;
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .header("X-Big", "a".repeat(5000))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 431);
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"The request head is larger than this server accepts [error-request-header-too-large]","errorType":"error-request-header-too-large"}"#
    );
    assert_eq!(p.standin.count_path("/api/info"), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_never_forwarded() {
    let p = start(|_| {}).await;
    for req in [
        "POST /_standin/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /_standin/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw(p.shim.addr, req.as_bytes(), Duration::from_millis(500)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(
            raw_body(&answer),
            r#"{"success":false,"error":"The request has both Content-Length and Transfer-Encoding [error-bad-request]","errorType":"error-bad-request"}"#
        );
    }
    assert_eq!(p.standin.count_path("/_standin/upload"), 0);
}

#[tokio::test]
async fn slow_client_is_cut_while_others_are_served() {
    let p = start(|c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(p.shim.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /api/info HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Meanwhile a normal client is served.
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was not cut off");
    assert_eq!(p.standin.count_path("/api/info"), 1);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let p = start(|_| {}).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = c
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["success"], true);
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("host"), Some(p.shim.addr.to_string().as_str()));
}

#[tokio::test]
async fn path_prefix_is_kept_in_forwarded_paths() {
    let p = start(|c| c.upstream.path_prefix = "/chat".into()).await;
    let _ = client()
        .get(format!("{}/chat/api/info?x=1", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(
        p.standin
            .requests()
            .last()
            .map(|r| r.target.clone())
            .as_deref(),
        Some("/chat/api/info?x=1")
    );
}
