//! End-to-end tests: start a stand-in and talk to it over real sockets (HTTP/1.1, h2c,
//! WebSocket and raw TCP for the faults).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::{Fault, Seed, Standin, User};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn get_as(s: &Standin, path: &str, user: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", s.url()))
        .header("X-User-Id", format!("{user}-id"))
        .header("x-auth-token", format!("{user}-token"))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn login_then_read_others_dm() {
    let s = Standin::start().await.expect("start");
    let c = client();
    let login: Value = c
        .post(format!("{}/api/v1/login", s.url()))
        .json(&json!({"username": "admin", "password": "admin-pass"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    assert_eq!(login["status"], "success");
    assert_eq!(login["data"]["authToken"], "admin-token");
    assert_eq!(login["data"]["userId"], "admin-id");
    assert_eq!(login["data"]["me"]["username"], "admin");

    let bad = c
        .post(format!("{}/api/v1/login", s.url()))
        .json(&json!({"user": "admin", "password": "nope"}))
        .send()
        .await
        .expect("login");
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.expect("json"),
        json!({"status":"error","error":"Unauthorized","message":"Unauthorized"})
    );

    let r = get_as(
        &s,
        "/api/v1/dm.messages.others?roomId=alice-idbob-id&offset=0&count=50",
        "admin",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let body: Value = r.json().await.expect("json");
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["messages", "offset", "count", "total", "success"]);
    assert_eq!(
        (
            body["offset"].clone(),
            body["count"].clone(),
            body["total"].clone()
        ),
        (json!(0), json!(50), json!(120))
    );
    let first = &body["messages"][0];
    assert_eq!(first["_id"], "alice-idbob-id-m120");
    assert_eq!(first["rid"], "alice-idbob-id");
    assert_eq!(first["msg"], "message 120 in alice-idbob-id");
    assert_eq!(
        first["u"],
        json!({"_id": "bob-id", "username": "bob", "name": "Bob"})
    );

    // The query-string injection reaches another DM, as on the real server.
    let r = get_as(
        &s,
        "/api/v1/im.messages.others?roomId%5B%24ne%5D=alice-idbob-id",
        "admin",
    )
    .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["total"], 3);

    assert_eq!(s.count_path("/api/v1/dm.messages.others"), 1);
    assert_eq!(s.count_path("/api/v1/login"), 2);
    let reqs = s.requests();
    assert_eq!(reqs[0].method, "POST");
    assert!(reqs[0].body_len > 0);
    assert_eq!(
        reqs[2].target,
        "/api/v1/dm.messages.others?roomId=alice-idbob-id&offset=0&count=50"
    );
    assert_eq!(reqs[2].header("X-User-Id"), Some("admin-id"));
    s.shutdown().await;
}

#[tokio::test]
async fn auth_errors_and_policy_order() {
    let s = Standin::start().await.expect("start");
    let c = client();
    let r = c
        .get(format!("{}/api/v1/im.messages.others?roomId=x", s.url()))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."})
    );
    assert_eq!(s.count_path("/api/v1/im.messages.others"), 1);

    let r = get_as(
        &s,
        "/api/v1/im.messages.others?roomId=alice-idbob-id",
        "bob",
    )
    .await;
    assert_eq!(r.status(), 403);
    s.set_dm_history_enabled(false);
    let r = get_as(
        &s,
        "/api/v1/im.messages.others?roomId=alice-idbob-id",
        "bob",
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = get_as(
        &s,
        "/api/v1/dm.messages.others?roomId=alice-idbob-id",
        "admin",
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]","errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}})
    );
    s.set_dm_history_enabled(true);
    s.set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let r = get_as(
        &s,
        "/api/v1/im.messages.others?roomId=admin-idalice-id",
        "auditor",
    )
    .await;
    assert_eq!(r.status(), 200);

    // Bearer and access_token credentials.
    let r = c
        .get(format!("{}/api/v1/me", s.url()))
        .bearer_auth("admin-oauth-token")
        .send()
        .await
        .expect("req");
    assert_eq!(r.json::<Value>().await.expect("json")["_id"], "admin-id");
    s.add_user(User {
        id: "carol-id".into(),
        username: "carol".into(),
        password: "p".into(),
        token: "carol-token".into(),
        roles: vec!["user".into()],
    });
    s.add_bearer_token("carol-oauth", "carol-id");
    let r = c
        .get(format!("{}/api/v1/me?access_token=carol-oauth", s.url()))
        .send()
        .await
        .expect("req");
    let me: Value = r.json().await.expect("json");
    assert_eq!(
        (me["username"].clone(), me["success"].clone()),
        (json!("carol"), json!(true))
    );

    let r = get_as(&s, "/api/v1/permissions.listAll", "bob").await;
    let perms: Value = r.json().await.expect("json");
    let vra = perms["update"]
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["_id"] == "view-room-administration")
        .cloned();
    assert_eq!(vra.expect("present")["roles"], json!(["admin", "auditor"]));

    s.set_setting_value("API_Enable_Direct_Message_History_EndPoint", json!("true"));
    let r = get_as(
        &s,
        "/api/v1/settings/API_Enable_Direct_Message_History_EndPoint",
        "admin",
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"_id":"API_Enable_Direct_Message_History_EndPoint","value":"true","success":true})
    );
    let r = get_as(
        &s,
        "/api/v1/im.messages.others?roomId=alice-idbob-id",
        "admin",
    )
    .await;
    assert_eq!(r.status(), 400);
    s.shutdown().await;
}

#[tokio::test]
async fn head_and_http2() {
    let s = Standin::start().await.expect("start");
    let r = client()
        .head(format!(
            "{}/api/v1/im.messages.others?roomId=alice-idbob-id",
            s.url()
        ))
        .header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "admin-token")
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["content-length"]
        .to_str()
        .expect("str")
        .parse()
        .expect("num");
    assert!(len > 1000);
    assert!(r.bytes().await.expect("body").is_empty());

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = h2
        .get(format!("{}/api/info", s.url()))
        .send()
        .await
        .expect("h2");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"version":"6.13.0","success":true})
    );
    s.shutdown().await;
}

#[tokio::test]
async fn api_info_reports_the_version_it_is_given() {
    let s = Standin::start().await.expect("start");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let info = || async {
        client
            .get(format!("{}/api/info", s.url()))
            .send()
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")
    };
    assert_eq!(info().await, json!({"version":"6.13.0","success":true}));
    s.set_version("5.4.2");
    assert_eq!(info().await, json!({"version":"5.4.2","success":true}));
    s.shutdown().await;
}

#[tokio::test]
async fn helpers_stream_and_echo() {
    let s = Standin::start().await.expect("start");
    let c = client();
    let n = 1_000_003u64;
    let r = c
        .get(format!("{}/_standin/bytes/{n}", s.url()))
        .send()
        .await
        .expect("bytes");
    assert_eq!(r.content_length(), Some(n));
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len() as u64, n);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let r = c
        .put(format!("{}/_standin/upload", s.url()))
        .body(payload.clone())
        .send()
        .await
        .expect("upload");
    let v: Value = r.json().await.expect("json");
    let hex: String = Sha256::digest(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v, json!({"bytes": 300_000, "sha256": hex}));
    assert_eq!(s.requests().last().expect("recorded").body_len, 300_000);

    let r = c
        .get(format!("{}/_standin/cookies", s.url()))
        .send()
        .await
        .expect("cookies");
    let cookies: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("str"))
        .collect();
    assert_eq!(cookies, ["a=1", "b=2", "c=3"]);

    let r = c
        .get(format!("{}/_standin/status/418", s.url()))
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 418);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"status": 418})
    );

    let r = c
        .post(format!("{}/_standin/echo?x=1", s.url()))
        .header("X-Thing", "one")
        .header("X-Thing", "two")
        .body("hello")
        .send()
        .await
        .expect("echo");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["target"], "/_standin/echo?x=1");
    assert_eq!(v["body_len"], 5);
    let things: Vec<&Value> = v["headers"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|h| h[0] == "x-thing")
        .map(|h| &h[1])
        .collect();
    assert_eq!(things, [&json!("one"), &json!("two")]);

    let r = c
        .get(format!("{}/_standin/chunked", s.url()))
        .send()
        .await
        .expect("chunked");
    assert_eq!(r.content_length(), None);
    assert_eq!(
        r.text().await.expect("text"),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );

    s.set_delay("/_standin/status/200", Duration::from_millis(300));
    let t = Instant::now();
    c.get(format!("{}/_standin/status/200", s.url()))
        .send()
        .await
        .expect("delayed");
    assert!(t.elapsed() >= Duration::from_millis(300));
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_echo() {
    let s = Standin::start().await.expect("start");
    let url = format!("ws://{}/websocket", s.addr());
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("{\"msg\":\"connect\"}"))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("msg").expect("ok"),
        Message::text("{\"msg\":\"connect\"}")
    );
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("msg").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.send(Message::Ping(b"p".to_vec().into()))
        .await
        .expect("ping");
    assert!(matches!(
        ws.next().await.expect("msg").expect("ok"),
        Message::Pong(_)
    ));
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}

    let url = format!("ws://{}/sockjs/123/abc/websocket", s.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect sockjs");
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("msg").expect("ok"),
        Message::text("hi")
    );
    s.shutdown().await;
}

async fn raw_get(s: &Standin, path: &str) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(s.addr()).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => return Ok(out),
        }
    }
}

#[tokio::test]
async fn faults() {
    let s = Standin::start().await.expect("start");

    s.set_fault(Fault::HangBeforeHead);
    let hung = tokio::time::timeout(Duration::from_millis(300), raw_get(&s, "/api/info")).await;
    assert!(hung.is_err(), "must not answer");
    assert_eq!(s.count_path("/api/info"), 1);

    s.set_fault(Fault::SlowHead(Duration::from_millis(200)));
    let t = Instant::now();
    let out = raw_get(&s, "/_standin/status/200").await.expect("slow");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(out.starts_with(b"HTTP/1.1 200"));

    s.set_fault(Fault::ResetMidBody);
    let mut tcp = TcpStream::connect(s.addr()).await.expect("connect");
    tcp.write_all(b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match tcp.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("content-length: 1000000"), "{text}");
    let head_len = text.find("\r\n\r\n").expect("head") + 4;
    assert_eq!(out.len() - head_len, 1000);
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));

    s.set_fault(Fault::CloseAfterHead);
    let out = raw_get(&s, "/api/info").await.expect("close after head");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"),
        "{text}"
    );

    s.set_fault(Fault::Garbage);
    let out = raw_get(&s, "/garbage").await.unwrap_or_default();
    assert!(!out.starts_with(b"HTTP/"));
    assert_eq!(s.count_path("/garbage"), 1);
    assert!(client()
        .get(format!("{}/api/info", s.url()))
        .send()
        .await
        .is_err());

    s.set_fault(Fault::None);
    let r = client()
        .get(format!("{}/api/info", s.url()))
        .send()
        .await
        .expect("healthy again");
    assert_eq!(r.status(), 200);
    s.clear_requests();
    assert!(s.requests().is_empty());

    let addr = s.addr();
    s.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn custom_seed() {
    let seed = Seed {
        users: vec![User {
            id: "u1".into(),
            username: "root".into(),
            password: "pw".into(),
            token: "tk".into(),
            roles: vec!["admin".into()],
        }],
        rooms: vec![rocketchat_standin::Room {
            id: "dm1".into(),
            kind: 'd',
            usernames: vec!["root".into()],
            messages: 7,
        }],
        dm_history_enabled: true,
    };
    let s = Standin::start_on("127.0.0.1:0".parse().expect("addr"), seed)
        .await
        .expect("start");
    let r = client()
        .get(format!(
            "{}/api/v1/im.messages.others?roomId=dm1&count=0&sort=%7B%22ts%22%3A1%7D",
            s.url()
        ))
        .header("X-User-Id", "u1")
        .header("X-Auth-Token", "tk")
        .send()
        .await
        .expect("req");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["count"].clone(), v["total"].clone()),
        (json!(7), json!(7))
    );
    assert_eq!(v["messages"][0]["ts"], "2024-01-01T00:00:01.000Z");
    drop(s);
}

#[test]
fn binary_prints_its_address() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rocketchat-standin"))
        .args(["--listen", "127.0.0.1:0", "--dm-history-disabled"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(
        line.starts_with("rocketchat-standin listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(status.success(), "{status:?}");
}
