//! The audit trail wired into the request pipeline (spec/shim.md 9.1, 9.3): the trail opened
//! once at start (an unusable path is exit 1) and closed after the drain; one exact record
//! per answer of the endpoint and of the guarded related endpoints, allowed and refused; the
//! digest recomputed here from the body the client received; durability before disclosure
//! (deny: the exact 503, `/readyz` 503, then recovery); 50 concurrent clients; SIGKILL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proc::{write_config, BIN};
use common::*;
use rocketchat_shim::audit::UNAVAILABLE_BODY;
use rocketchat_shim::config::{AuditOnFailure, Budget, Config, DmHistoryEndpoint};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The fields of a record, in the order of spec/shim.md 9.1.
const FIELDS: [&str; 19] = [
    "seq",
    "ts",
    "instance",
    "request_id",
    "client_ip",
    "actor",
    "endpoint",
    "alias",
    "room",
    "query",
    "reason",
    "decision",
    "status",
    "error",
    "messages",
    "message_ids_sha256",
    "cache",
    "alert",
    "prev",
];
const ROOM: &str = "alice-idbob-id";

/// A fresh directory under the target dir (the trail must be on a real filesystem for
/// `chattr`).
fn tempdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

#[test]
fn an_unusable_trail_path_stops_the_start_with_exit_1_and_the_reason() {
    let dir = tempdir("unusable");
    let missing = dir.join("no-such-dir/audit.jsonl");
    let config = write_config(
        &dir,
        "http://127.0.0.1:3000",
        &format!(
            "[audit]\nenabled = true\npath = \"{}\"\n",
            missing.display()
        ),
    );
    let (code, err) = run_bounded(Command::new(BIN).arg("--config").arg(&config));
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "cannot open the audit trail {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

/// Runs a command for at most 20 s (a shim that starts instead of failing is killed):
/// its exit code and stderr.
fn run_bounded(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (code, err)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of 9.1, computed here from the body the client received: SHA-256 of the
/// messages' `_id`s joined by `\n`.
fn digest_of(body: &Value) -> (u64, String) {
    let ids: Vec<&str> = body["messages"]
        .as_array()
        .expect("a messages array")
        .iter()
        .map(|m| m["_id"].as_str().expect("an _id"))
        .collect();
    (
        ids.len() as u64,
        hex(&Sha256::digest(ids.join("\n").as_bytes())),
    )
}

/// The trail's lines, each checked: whole, the fields of 9.1 in order, `instance`, `seq`
/// counting from 1 and `prev` the SHA-256 of the previous line (computed here). Returns the
/// records without the four fields the writer adds.
fn records(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).expect("read the trail");
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "ends mid-line");
    let mut prev = ZEROS.to_owned();
    let mut out = Vec::new();
    for (i, line) in bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let mut v: Value = serde_json::from_slice(line).expect("a JSON line");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, FIELDS, "line {}", i + 1);
        assert_eq!(v["seq"], json!(i as u64 + 1));
        assert_eq!(
            v["prev"].as_str(),
            Some(prev.as_str()),
            "prev of line {}",
            i + 1
        );
        assert_eq!(v["instance"], "test-instance");
        assert_eq!(v["ts"].as_str().map(str::len), Some(24));
        prev = hex(&Sha256::digest(line));
        let m = v.as_object_mut().expect("object");
        for k in ["seq", "ts", "instance", "prev"] {
            m.remove(k);
        }
        out.push(v);
    }
    out
}

/// The record of `request_id` (exactly one).
fn record_of(path: &Path, request_id: &str) -> Value {
    let mut found: Vec<Value> = records(path)
        .into_iter()
        .filter(|r| r["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "records of {request_id}");
    found.remove(0)
}

/// A record as 9.1 spells it (without the writer's four fields).
#[allow(clippy::too_many_arguments)]
fn expected(
    request_id: &str,
    actor: Value,
    endpoint: &str,
    alias: &str,
    room: Value,
    query: Value,
    decision: &str,
    status: u16,
    error: Value,
    messages: Value,
    digest: Value,
    cache: &str,
) -> Value {
    json!({
        "request_id": request_id, "client_ip": "127.0.0.1", "actor": actor,
        "endpoint": endpoint, "alias": alias, "room": room, "query": query, "reason": null,
        "decision": decision, "status": status, "error": error, "messages": messages,
        "message_ids_sha256": digest, "cache": cache, "alert": false,
    })
}

fn person(name: &str) -> Value {
    json!({"id": format!("{name}-id"), "username": name})
}

fn members() -> Value {
    json!([person("alice"), person("bob")])
}

fn room(members: Value) -> Value {
    json!({"id": ROOM, "members": members})
}

/// Turns the trail on at `path` (instance `test-instance`).
fn audit_on(c: &mut Config, path: &Path) {
    c.audit.enabled = true;
    c.audit.path = path.to_owned();
    c.audit.instance = "test-instance".into();
}

async fn get(rb: reqwest::RequestBuilder, request_id: &str) -> (u16, String) {
    let r = rb
        .header("X-Request-Id", request_id)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test]
async fn allowed_and_cache_hit_answers_have_exact_records_from_the_body_sent() {
    let dir = tempdir("allowed");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| audit_on(c, &path)).await;
    let http = client();
    let url = format!(
        "{}/api/v1/dm.messages.others?count=2&roomId={ROOM}&sort=%7B%22ts%22%3A1%7D",
        pair.url()
    );
    let (status, body) = get(admin(http.get(&url)), "req-miss").await;
    assert_eq!(status, 200);
    let sent: Value = serde_json::from_str(&body).expect("json");
    let (n, digest) = digest_of(&sent);
    assert_eq!(n, 2);
    let want = |id: &str, cache: &str| {
        expected(
            id,
            person("admin"),
            "im.messages.others",
            "dm",
            room(members()),
            json!({"offset": 0, "count": 2, "sort": {"ts": 1}}),
            "allow",
            200,
            Value::Null,
            json!(n),
            json!(digest),
            cache,
        )
    };
    // Written before the answer was returned: it is in the file now.
    assert_eq!(record_of(&path, "req-miss"), want("req-miss", "miss"));

    // The same read again: from the cache, same body, same digest; the members from theirs.
    let (status, body2) = get(admin(http.get(&url)), "req-hit").await;
    assert_eq!((status, &body2), (200, &body));
    assert_eq!(record_of(&path, "req-hit"), want("req-hit", "hit"));
    assert_eq!(
        pair.standin.count_path("/api/v1/rooms.adminRooms.getRoom"),
        1
    );
    assert_eq!(pair.standin.count_path("/api/v1/im.messages.others"), 1);

    // HEAD discloses no messages: no array, no digest.
    let r = admin(http.head(&url))
        .header("X-Request-Id", "req-head")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut head = want("req-head", "hit");
    head["messages"] = Value::Null;
    head["message_ids_sha256"] = Value::Null;
    assert_eq!(record_of(&path, "req-head"), head);

    // An upstream error is the upstream's answer: allow, its status and error id.
    let nope = format!("{}/api/v1/im.messages.others?roomId=GENERAL", pair.url());
    let (status, _) = get(admin(http.get(&nope)), "req-not-dm").await;
    assert_eq!(status, 400);
    assert_eq!(
        record_of(&path, "req-not-dm"),
        expected(
            "req-not-dm",
            person("admin"),
            "im.messages.others",
            "im",
            // GENERAL is a channel: getRoom has no uids, so the members stay unknown.
            json!({"id": "GENERAL", "members": null}),
            json!({"offset": 0, "count": 50}),
            "allow",
            400,
            json!("error-room-not-found"),
            Value::Null,
            Value::Null,
            "miss",
        )
    );
    assert_eq!(records(&path).len(), 4);
}

#[tokio::test]
async fn every_refusal_has_its_exact_record() {
    let dir = tempdir("refused");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| audit_on(c, &path)).await;
    let http = client();
    let url = format!("{}/api/v1/im.messages.others?roomId={ROOM}", pair.url());
    let refused = |id: &str, actor: Value, alias: &str, room: Value, status: u16, error: &str| {
        expected(
            id,
            actor,
            "im.messages.others",
            alias,
            room,
            Value::Null,
            "refuse",
            status,
            json!(error),
            Value::Null,
            Value::Null,
            "bypass",
        )
    };
    let named = json!({"id": ROOM, "members": null});

    assert_eq!(get(http.get(&url), "r401").await.0, 401);
    assert_eq!(
        record_of(&path, "r401"),
        refused(
            "r401",
            Value::Null,
            "im",
            named.clone(),
            401,
            "not-logged-in"
        )
    );

    assert_eq!(get(alice(http.get(&url)), "r403").await.0, 403);
    assert_eq!(
        record_of(&path, "r403"),
        refused(
            "r403",
            person("alice"),
            "im",
            named.clone(),
            403,
            "error-unauthorized"
        )
    );

    let post = format!("{}/api/v1/dm.messages.others?roomId={ROOM}", pair.url());
    assert_eq!(get(admin(http.post(&post)), "r405").await.0, 405);
    assert_eq!(
        record_of(&path, "r405"),
        refused(
            "r405",
            Value::Null,
            "dm",
            Value::Null,
            405,
            "error-method-not-allowed"
        )
    );

    let bad = format!("{url}&count=-5");
    assert_eq!(get(admin(http.get(&bad)), "r400").await.0, 400);
    assert_eq!(
        record_of(&path, "r400"),
        refused(
            "r400",
            person("admin"),
            "im",
            named.clone(),
            400,
            "error-invalid-params"
        )
    );

    let missing = format!("{}/api/v1/im.messages.others", pair.url());
    assert_eq!(get(admin(http.get(&missing)), "r400-room").await.0, 400);
    assert_eq!(
        record_of(&path, "r400-room"),
        refused(
            "r400-room",
            person("admin"),
            "im",
            Value::Null,
            400,
            "error-roomid-param-not-provided"
        )
    );

    // A reload keeps the trail (the same file, the chain going on).
    let mut c = base_config(&pair.standin.url());
    audit_on(&mut c, &path);
    c.policy.dm_history_endpoint = DmHistoryEndpoint::Disabled;
    pair.shim.reload(c.clone()).expect("reload");
    assert_eq!(get(admin(http.get(&url)), "r-disabled").await.0, 400);
    assert_eq!(
        record_of(&path, "r-disabled"),
        refused(
            "r-disabled",
            person("admin"),
            "im",
            named.clone(),
            400,
            "error-endpoint-disabled"
        )
    );

    c.policy.dm_history_endpoint = DmHistoryEndpoint::Enabled;
    c.rate_limit.enabled = true;
    c.rate_limit.per_ip = Budget {
        requests: 1,
        per: Duration::from_secs(3600),
    };
    pair.shim.reload(c).expect("reload");
    assert_eq!(get(http.get(&url), "r-ip-1").await.0, 401);
    let (status, _) = get(http.get(&url), "r-ip-2").await;
    assert_eq!(status, 429);
    assert_eq!(
        record_of(&path, "r-ip-2"),
        refused(
            "r-ip-2",
            Value::Null,
            "im",
            named,
            429,
            "error-too-many-requests"
        )
    );
    assert_eq!(records(&path).len(), 8);
}

#[tokio::test]
async fn guarded_endpoints_have_records_allowed_and_refused() {
    let dir = tempdir("guarded");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| {
        audit_on(c, &path);
        c.policy.guard_related_endpoints = true;
    })
    .await;
    let http = client();
    let counters = format!(
        "{}/api/v1/dm.counters?roomId={ROOM}&userId=bob-id",
        pair.url()
    );
    let (status, body) = get(admin(http.get(&counters)), "g-allow").await;
    assert_eq!(status, 200, "{body}");
    let allowed = |id: &str,
                   endpoint: &str,
                   alias: &str,
                   room: Value,
                   query: Value,
                   status: u16,
                   error: Value| {
        expected(
            id,
            person("admin"),
            endpoint,
            alias,
            room,
            query,
            "allow",
            status,
            error,
            Value::Null,
            Value::Null,
            "bypass",
        )
    };
    assert_eq!(
        record_of(&path, "g-allow"),
        allowed(
            "g-allow",
            "im.counters",
            "dm",
            room(members()),
            json!({"roomId": ROOM, "userId": "bob-id"}),
            200,
            Value::Null
        )
    );

    let list = format!("{}/api/v1/im.list.everyone?count=1", pair.url());
    assert_eq!(get(admin(http.get(&list)), "g-list").await.0, 200);
    assert_eq!(
        record_of(&path, "g-list"),
        allowed(
            "g-list",
            "im.list.everyone",
            "im",
            Value::Null,
            json!({"count": "1"}),
            200,
            Value::Null
        )
    );

    // The upstream's own error, read for its id and passed on unchanged.
    let no_room = format!("{}/api/v1/im.counters", pair.url());
    let (status, body) = get(admin(http.get(&no_room)), "g-upstream-400").await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"success": false, "error": "Body param \"roomId\" is required [error-room-param-not-provided]", "errorType": "error-room-param-not-provided"})
    );
    assert_eq!(
        record_of(&path, "g-upstream-400"),
        allowed(
            "g-upstream-400",
            "im.counters",
            "im",
            Value::Null,
            json!({}),
            400,
            json!("error-room-param-not-provided")
        )
    );

    assert_eq!(get(alice(http.get(&list)), "g-403").await.0, 403);
    assert_eq!(
        record_of(&path, "g-403"),
        expected(
            "g-403",
            person("alice"),
            "im.list.everyone",
            "im",
            Value::Null,
            Value::Null,
            "refuse",
            403,
            json!("error-unauthorized"),
            Value::Null,
            Value::Null,
            "bypass"
        )
    );
    assert_eq!(get(http.get(&counters), "g-401").await.0, 401);
    assert_eq!(
        record_of(&path, "g-401"),
        expected(
            "g-401",
            Value::Null,
            "im.counters",
            "dm",
            json!({"id": ROOM, "members": null}),
            Value::Null,
            "refuse",
            401,
            json!("not-logged-in"),
            Value::Null,
            Value::Null,
            "bypass"
        )
    );
    // Pass-through traffic writes none.
    assert_eq!(
        admin(http.get(format!("{}/api/v1/me", pair.url())))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    assert_eq!(records(&path).len(), 5);
}

#[tokio::test]
async fn records_never_hold_a_credential_or_a_message_text() {
    let dir = tempdir("secrets");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| {
        audit_on(c, &path);
        c.policy.guard_related_endpoints = true;
    })
    .await;
    let http = client();
    let token = rocketchat_standin::DEFAULT_BEARER_TOKEN;
    let mut texts = Vec::new();
    for (i, target) in [
        format!("/api/v1/im.messages.others?roomId={ROOM}&access_token={token}"),
        format!("/api/v1/im.messages.others?roomId={ROOM}&count=3&access_token={token}"),
        format!("/api/v1/im.counters?roomId={ROOM}&userId=bob-id&access_token={token}"),
    ]
    .iter()
    .enumerate()
    {
        let r = http
            .get(format!("{}{target}", pair.url()))
            .header("Cookie", "rc_token=cookie-secret-value; rc_uid=admin-id")
            .header("X-Request-Id", format!("s{i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        for m in v["messages"].as_array().into_iter().flatten() {
            texts.push(m["msg"].as_str().expect("msg").to_owned());
        }
    }
    let (status, _) = get(
        admin(http.get(format!(
            "{}/api/v1/im.messages.others?roomId={ROOM}",
            pair.url()
        ))),
        "s-headers",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        http.get(format!(
            "{}/api/v1/im.messages.others?roomId={ROOM}",
            pair.url()
        ))
        .header("Authorization", "Bearer wrong-bearer-secret"),
        "s-bad",
    )
    .await;
    assert_eq!(status, 401);
    assert!(texts.len() >= 50);
    let file = std::fs::read_to_string(&path).expect("read");
    assert_eq!(records(&path).len(), 5);
    for secret in [
        token,
        "cookie-secret-value",
        "admin-token",
        "wrong-bearer-secret",
        "access_token",
    ] {
        assert!(!file.contains(secret), "{secret} in the trail");
    }
    for t in &texts {
        assert!(
            !file.contains(t.as_str()),
            "message text {t:?} in the trail"
        );
    }
}

/// Makes a file immutable (`chattr +i`: writes fail with EPERM, also for root) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let s = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .expect("chattr (e2fsprogs)");
        assert!(s.success(), "chattr +i");
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

async fn readyz(http: &reqwest::Client, pair: &Pair) -> (u16, String) {
    let r = http
        .get(format!("{}/readyz", pair.admin_url()))
        .send()
        .await
        .expect("readyz");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn metric(http: &reqwest::Client, pair: &Pair, name: &str) -> f64 {
    let text = http
        .get(format!("{}/metrics", pair.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test]
async fn deny_withholds_the_answer_while_the_trail_cannot_be_written_then_recovers() {
    let dir = tempdir("deny");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| audit_on(c, &path)).await;
    let http = client();
    let url = format!("{}/api/v1/im.messages.others?roomId={ROOM}", pair.url());
    assert_eq!(get(admin(http.get(&url)), "d-before").await.0, 200);
    assert_eq!(readyz(&http, &pair).await, (200, "ready\n".into()));

    let immutable = Immutable::set(&path);
    let r = admin(http.get(&url))
        .header("X-Request-Id", "d-denied")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["x-request-id"], "d-denied");
    assert_eq!(r.text().await.expect("body"), UNAVAILABLE_BODY);
    assert_eq!(
        readyz(&http, &pair).await,
        (503, "audit trail cannot be written\n".into())
    );
    // A refusal is sent whatever happens to its record.
    assert_eq!(get(http.get(&url), "d-refusal").await.0, 401);
    assert_eq!(
        metric(&http, &pair, "rcshim_audit_write_failures_total").await,
        2.0
    );
    assert_eq!(metric(&http, &pair, "rcshim_audit_failing").await, 1.0);

    // Writable again: the idle probe clears the state without traffic.
    drop(immutable);
    let mut ready = false;
    for _ in 0..200 {
        if readyz(&http, &pair).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz back to 200 within 10 s");
    assert_eq!(get(admin(http.get(&url)), "d-after").await.0, 200);
    let ids: Vec<Value> = records(&path)
        .iter()
        .map(|r| r["request_id"].clone())
        .collect();
    assert_eq!(ids, ["d-before", "d-after"]);
    assert_eq!(
        metric(&http, &pair, "rcshim_audit_records_written_total").await,
        2.0
    );
    assert!(metric(&http, &pair, "rcshim_audit_fsync_duration_seconds_count").await >= 2.0);
    assert_eq!(metric(&http, &pair, "rcshim_audit_alerts_total").await, 0.0);
    assert_eq!(metric(&http, &pair, "rcshim_audit_failing").await, 0.0);
}

#[tokio::test]
async fn allow_serves_the_answer_and_counts_the_failure() {
    let dir = tempdir("allow");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| {
        audit_on(c, &path);
        c.audit.on_failure = AuditOnFailure::Allow;
    })
    .await;
    let http = client();
    let url = format!(
        "{}/api/v1/im.messages.others?roomId={ROOM}&count=1",
        pair.url()
    );
    std::fs::write(&path, "").expect("touch");
    let _immutable = Immutable::set(&path);
    let (status, body) = get(admin(http.get(&url)), "a-served").await;
    assert_eq!(status, 200);
    assert_eq!(digest_of(&serde_json::from_str(&body).expect("json")).0, 1);
    assert_eq!(
        metric(&http, &pair, "rcshim_audit_write_failures_total").await,
        1.0
    );
    assert_eq!(readyz(&http, &pair).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_leave_fifty_records() {
    let dir = tempdir("fifty");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| audit_on(c, &path)).await;
    let url = format!("{}/api/v1/im.messages.others?roomId={ROOM}", pair.url());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body) = get(admin(client().get(&url)), &format!("c{i}")).await;
            assert_eq!(status, 200);
            digest_of(&serde_json::from_str(&body).expect("json")).1
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.expect("task"));
    }
    let recs = records(&path);
    assert_eq!(recs.len(), 50);
    // Fifty concurrent first lookups of one room's members: one upstream call.
    assert_eq!(
        pair.standin.count_path("/api/v1/rooms.adminRooms.getRoom"),
        1
    );
    for (i, d) in digests.iter().enumerate() {
        let r = recs
            .iter()
            .find(|r| r["request_id"] == format!("c{i}"))
            .unwrap_or_else(|| panic!("no record of c{i}"));
        assert_eq!(r["message_ids_sha256"], json!(d));
        assert_eq!(r["status"], 200);
    }
}

#[tokio::test]
async fn the_trail_is_closed_after_the_drain() {
    let dir = tempdir("close");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| audit_on(c, &path)).await;
    let http = client();
    let url = format!("{}/api/v1/im.messages.others?roomId={ROOM}", pair.url());
    assert_eq!(get(admin(http.get(&url)), "x1").await.0, 200);
    let Pair { standin, shim } = pair;
    shim.shutdown();
    shim.wait().await;
    // Closed: this process may open the path again, and the record is there.
    let cfg = rocketchat_shim::config::AuditConfig {
        path: path.clone(),
        ..Default::default()
    };
    let again = rocketchat_shim::audit::AuditTrail::open(&cfg).expect("reopened after close");
    again.close().await;
    assert_eq!(records(&path).len(), 1);
    standin.shutdown().await;
}

/// A shim process killed with SIGKILL while clients read the endpoint in a loop: every 200 a
/// client got has its record in the file (matched by request id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_a_record_for_every_200_sent() {
    let dir = tempdir("sigkill");
    let path = dir.join("audit.jsonl");
    let standin = rocketchat_standin::Standin::start()
        .await
        .expect("stand-in");
    let config = write_config(
        &dir,
        &standin.url(),
        &format!(
            "[policy]\ndm_history_endpoint = \"enabled\"\nroles = [\"admin\"]\n[rate_limit]\nenabled = false\n[cache]\nttl = \"50ms\"\n[audit]\nenabled = true\npath = \"{}\"\ninstance = \"test-instance\"\n",
            path.display()
        ),
    );
    let mut proc = common::proc::spawn_proc(&config);
    let url = format!(
        "http://{}/api/v1/im.messages.others?roomId={ROOM}&count=1",
        proc.addr
    );
    let ok = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, ok) = (url.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let http = client();
            for i in 0..5000 {
                let id = format!("k{c}-{i}");
                let r = admin(http.get(&url))
                    .header("X-Request-Id", &id)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        // A 200 counts once its body arrived whole.
                        if r.bytes().await.is_ok() {
                            ok.lock().expect("lock").push(id);
                        }
                    }
                    Ok(r) => panic!("{id}: {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once the clients are well into their loops.
    for _ in 0..2000 {
        if ok.lock().expect("lock").len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::proc::signal(&proc.child, "KILL");
    let _ = proc.child.wait();
    for c in clients {
        c.await.expect("client");
    }
    let got = ok.lock().expect("lock").clone();
    assert!(got.len() >= 200, "{} answers before the kill", got.len());
    let file = std::fs::read(&path).expect("read");
    let ids: std::collections::HashSet<String> = file
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = got.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(missing.is_empty(), "200s without a record: {missing:?}");
    assert!(ids.len() >= got.len());
    standin.shutdown().await;
}

/// `rocketchat-shim demo` with the trail on: its curl commands run through `sh`, then the
/// `audit verify` and `audit report --user alice` commands it prints, with the built binary.
#[test]
fn the_demo_prints_verify_and_report_commands_that_work() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (mut curls, mut audits, mut reasons) = (Vec::new(), Vec::new(), None);
    for line in BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(300)
    {
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        if line.starts_with("curl ") || line.starts_with("for ") {
            curls.push(line);
        } else if let Some(rest) = line.strip_prefix("rocketchat-shim audit ") {
            audits.push(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("tail -n 2 ") {
            reasons = Some(PathBuf::from(rest));
        }
    }
    for c in &curls {
        Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .expect("sh runs");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(audits.len(), 2, "{audits:?}");
    let run = |args: &str| {
        let out = Command::new(BIN)
            .arg("audit")
            .args(args.split(' '))
            .output()
            .expect("run audit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, verify) = run(&audits[0]);
    assert!(audits[0].starts_with("verify "), "{audits:?}");
    // 200 (miss), 200 (hit), 401, 403, three 400s, the protected 403 and the eight requests
    // of the 429 loop.
    assert_eq!(code, Some(0), "{verify}");
    assert!(
        verify.starts_with("ok: 16 records, last seq 16, last hash "),
        "{verify}"
    );
    let (code, report) = run(&audits[1]);
    assert!(audits[1].starts_with("report --user alice "), "{audits:?}");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("admin") && report.contains("alice-idbob-id"),
        "{report}"
    );
    let file = audits[0].trim_start_matches("verify ");
    let _ = std::fs::remove_file(file);
    // The reasons shim's trail: the refusal without a reason, then the read with its reason.
    let reasons = reasons.expect("the demo prints the reasons trail");
    let rs = records_any(&reasons);
    assert_eq!(rs.len(), 2, "{rs:?}");
    assert_eq!(
        (&rs[0]["status"], &rs[0]["error"], &rs[0]["reason"]),
        (&json!(400), &json!("error-reason-required"), &Value::Null)
    );
    assert_eq!(
        (&rs[1]["status"], &rs[1]["reason"]),
        (&json!(200), &json!("INC-4711 works council request"))
    );
    let _ = std::fs::remove_file(&reasons);
}

/// The records in a trail, whatever its instance name.
fn records_any(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read the trail")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// 9.2 and 9.3 in the trail: the refusal for a missing reason (no reason recorded), the
/// protected room's 403 with the reason given and the members that made it protected, and an
/// allowed read carrying its reason.
#[tokio::test]
async fn reasons_and_protected_refusals_are_recorded() {
    let dir = tempdir("rules");
    let path = dir.join("audit.jsonl");
    let pair = start(|c| {
        audit_on(c, &path);
        c.policy.require_reason = true;
        c.policy.protected_users = vec!["bob".into()];
    })
    .await;
    let http = client();
    let url = |room: &str| format!("{}/api/v1/im.messages.others?roomId={room}", pair.url());
    assert_eq!(get(admin(http.get(url(ROOM))), "no-reason").await.0, 400);
    let r = record_of(&path, "no-reason");
    assert_eq!(
        (&r["reason"], &r["error"], &r["decision"], &r["status"]),
        (
            &Value::Null,
            &json!("error-reason-required"),
            &json!("refuse"),
            &json!(400)
        )
    );
    let with = |rb: reqwest::RequestBuilder| admin(rb).header("X-Audit-Reason", " INC-7 ");
    assert_eq!(get(with(http.get(url(ROOM))), "protected").await.0, 403);
    let r = record_of(&path, "protected");
    assert_eq!(
        (&r["reason"], &r["error"], &r["room"], &r["alert"]),
        (
            &json!("INC-7"),
            &json!("error-room-protected"),
            &room(members()),
            &json!(false)
        )
    );
    let other = "admin-idalice-id";
    assert_eq!(get(with(http.get(url(other))), "allowed").await.0, 200);
    let r = record_of(&path, "allowed");
    assert_eq!(
        (&r["reason"], &r["decision"], &r["status"]),
        (&json!("INC-7"), &json!("allow"), &json!(200))
    );
}
