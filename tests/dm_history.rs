//! The intercepted endpoint end to end (spec/shim.md §1-4): every row of the policy table in
//! both error styles, credential forms, roles, identity caching, fail-closed lookups, the
//! bypass table, parameter rules and the exact upstream query.

mod common;

use std::time::Duration;

use common::*;
use rocketchat_shim::config::{DmHistoryEndpoint, ErrorStyle, QueryAndFields, RolesSource};
use rocketchat_standin::Fault;
use serde_json::Value;

const EP: &str = "/api/v1/im.messages.others";
const ROOM: &str = "alice-idbob-id";
const MODERN_401: &str = r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#;
const LEGACY_401: &str = r#"{"status":"error","message":"You must be logged in to do this."}"#;
const MODERN_403: &str = r#"{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}"#;
const LEGACY_403: &str = r#"{"success":false,"error":"unauthorized"}"#;
const DISABLED: &str = r#"{"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]","errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}}"#;
const NO_ROOM: &str = r#"{"success":false,"error":"The parameter \"roomId\" is required [error-roomid-param-not-provided]","errorType":"error-roomid-param-not-provided"}"#;

async fn get(
    p: &Pair,
    path: &str,
    who: Option<fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder>,
) -> (u16, String) {
    let mut rb = client().get(format!("{}{}", p.url(), path));
    if let Some(w) = who {
        rb = w(rb);
    }
    let r = rb.send().await.expect("send");
    let s = r.status().as_u16();
    (s, r.text().await.expect("text"))
}

fn endpoint_requests(p: &Pair) -> usize {
    p.standin
        .requests()
        .iter()
        .filter(|r| r.path.contains("messages.others"))
        .count()
}

async fn policy_table(style: ErrorStyle) {
    let (u401, u403) = match style {
        ErrorStyle::Modern => (MODERN_401, MODERN_403),
        ErrorStyle::Legacy => (LEGACY_401, LEGACY_403),
    };
    let room = format!("{EP}?roomId={ROOM}");
    // Endpoint enabled.
    let on = start(|c| {
        c.policy.error_style = style;
        c.cache.enabled = false;
    })
    .await;
    assert_eq!(get(&on, &room, None).await, (401, u401.to_string()));
    let bad = |rb: reqwest::RequestBuilder| {
        rb.header("X-User-Id", "admin-id")
            .header("X-Auth-Token", "wrong")
    };
    assert_eq!(get(&on, &room, Some(bad)).await, (401, u401.to_string()));
    assert_eq!(get(&on, &room, Some(alice)).await, (403, u403.to_string()));
    assert_eq!(get(&on, EP, Some(admin)).await, (400, NO_ROOM.to_string()));
    assert_eq!(
        get(&on, &format!("{EP}?roomId=%20%20"), Some(admin)).await,
        (400, NO_ROOM.to_string())
    );
    // Step 5: the upstream's own answer for an unknown room or a channel passes through.
    let (s, b) = get(&on, &format!("{EP}?roomId=nope"), Some(admin)).await;
    assert_eq!(
        (s, b.as_str()),
        (
            400,
            r#"{"success":false,"error":"No direct message room found by the id of: nope [error-room-not-found]","errorType":"error-room-not-found"}"#
        )
    );
    let (s, b) = get(&on, &format!("{EP}?roomId=GENERAL"), Some(admin)).await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("error-room-not-found"), "{b}");
    let (s, b) = get(&on, &room, Some(admin)).await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["success"], true);
    assert_eq!(v["total"], 120);
    assert_eq!(v["count"], 50);
    assert_eq!(v["messages"].as_array().map(|a| a.len()), Some(50));
    // Refused callers never reached the upstream's endpoint; only the allowed ones did.
    assert_eq!(endpoint_requests(&on), 3);

    // Endpoint disabled by the shim while the upstream is permissive.
    let off = start(|c| {
        c.policy.error_style = style;
        c.policy.dm_history_endpoint = DmHistoryEndpoint::Disabled;
    })
    .await;
    assert_eq!(get(&off, &room, None).await, (401, u401.to_string()));
    let alice_off = get(&off, &room, Some(alice)).await;
    match style {
        // Modern: permission first, so alice never learns the endpoint is off.
        ErrorStyle::Modern => assert_eq!(alice_off, (403, u403.to_string())),
        ErrorStyle::Legacy => assert_eq!(alice_off, (400, DISABLED.to_string())),
    }
    assert_eq!(
        get(&off, &room, Some(admin)).await,
        (400, DISABLED.to_string())
    );
    // dm. reports the im. route, as Rocket.Chat does.
    assert_eq!(
        get(
            &off,
            &format!("/api/v1/dm.messages.others?roomId={ROOM}"),
            Some(admin)
        )
        .await,
        (400, DISABLED.to_string())
    );
    assert_eq!(endpoint_requests(&off), 0);
}

#[tokio::test]
async fn policy_table_modern() {
    policy_table(ErrorStyle::Modern).await;
}

#[tokio::test]
async fn policy_table_legacy() {
    policy_table(ErrorStyle::Legacy).await;
}

#[tokio::test]
async fn error_bodies_are_json_and_not_stored() {
    let p = start(|_| {}).await;
    let r = client()
        .get(format!("{}{EP}?roomId={ROOM}", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn every_credential_form_is_accepted() {
    let p = start(|c| c.cache.enabled = false).await;
    let url = format!("{}{EP}?roomId={ROOM}&count=1", p.url());
    let forms = [
        client()
            .get(&url)
            .header("x-auth-token", "admin-token")
            .header("X-USER-ID", "admin-id"),
        client()
            .get(&url)
            .header("Authorization", "Bearer admin-oauth-token"),
        client().get(format!("{url}&access_token=admin-oauth-token")),
    ];
    for rb in forms {
        let r = rb.send().await.expect("send");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["count"], 1);
    }
    // The access_token reached /me and the endpoint; the bearer token went as a header.
    let reqs = p.standin.requests();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.path == EP)
        .expect("endpoint request");
    assert_eq!(
        last.target,
        format!("{EP}?roomId={ROOM}&offset=0&count=1&access_token=admin-oauth-token")
    );
    // Cookies are not a credential for /api/v1.
    let r = client()
        .get(&url)
        .header("Cookie", "rc_uid=admin-id; rc_token=admin-token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn roles_come_from_the_upstream_including_custom_roles() {
    let p = start(|c| c.cache.enabled = false).await;
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let auditor = |rb: reqwest::RequestBuilder| {
        rb.header("X-User-Id", "auditor-id")
            .header("X-Auth-Token", "auditor-token")
    };
    let (s, b) = get(&p, &format!("{EP}?roomId={ROOM}"), Some(auditor)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        get(&p, &format!("{EP}?roomId={ROOM}"), Some(alice)).await.0,
        403
    );
}

#[tokio::test]
async fn a_configured_role_list_ignores_the_upstream() {
    let p = start(|c| {
        c.policy.roles = RolesSource::List(vec!["admin".into()]);
        c.cache.enabled = false;
    })
    .await;
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let auditor = |rb: reqwest::RequestBuilder| {
        rb.header("X-User-Id", "auditor-id")
            .header("X-Auth-Token", "auditor-token")
    };
    assert_eq!(
        get(&p, &format!("{EP}?roomId={ROOM}"), Some(auditor)).await,
        (403, MODERN_403.to_string())
    );
    assert_eq!(
        get(&p, &format!("{EP}?roomId={ROOM}"), Some(admin)).await.0,
        200
    );
    assert_eq!(p.standin.count_path("/api/v1/permissions.listAll"), 0);
}

#[tokio::test]
async fn the_identity_cache_makes_at_most_one_me_call_for_twenty_requests() {
    let p = start(|c| c.cache.enabled = false).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("{}{EP}?roomId={ROOM}&count={}", p.url(), i + 1);
        tasks.push(tokio::spawn(async move {
            admin(client().get(url))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("send"), 200);
    }
    assert_eq!(p.standin.count_path("/api/v1/me"), 1);
    assert_eq!(p.standin.count_path("/api/v1/permissions.listAll"), 1);
}

#[tokio::test]
async fn identity_lookups_fail_closed() {
    // /me hangs: 504, never a pass.
    let p = start(|c| c.upstream.response_timeout = Duration::from_millis(300)).await;
    p.standin.set_fault(Fault::HangBeforeHead);
    let (s, b) = get(&p, &format!("{EP}?roomId={ROOM}"), Some(admin)).await;
    assert_eq!(s, 504, "{b}");
    assert_eq!(
        b,
        r#"{"success":false,"error":"The upstream server did not answer in time; access cannot be checked [error-gateway-timeout]","errorType":"error-gateway-timeout"}"#
    );
    // /me unreachable: 502.
    let p = start(|c| {
        c.upstream.url = rocketchat_shim::config::parse_upstream_url(&format!(
            "http://127.0.0.1:{}",
            dead_port()
        ))
        .expect("url");
    })
    .await;
    let (s, b) = get(&p, &format!("{EP}?roomId={ROOM}"), Some(admin)).await;
    assert_eq!(s, 502, "{b}");
    assert_eq!(
        b,
        r#"{"success":false,"error":"The upstream server could not confirm access; the request is refused [error-bad-gateway]","errorType":"error-bad-gateway"}"#
    );
}

#[tokio::test]
async fn the_upstream_setting_is_read_with_the_service_account_and_fails_closed() {
    std::env::set_var("RCSHIM_TEST_SERVICE_TOKEN", "admin-token");
    let p = start(|c| {
        c.policy.dm_history_endpoint = DmHistoryEndpoint::Upstream;
        c.policy.setting_ttl = Duration::from_millis(200);
        c.cache.enabled = false;
        c.upstream.service_account = Some(rocketchat_shim::config::ServiceAccountConfig {
            user_id: "admin-id".into(),
            token_env: "RCSHIM_TEST_SERVICE_TOKEN".into(),
        });
    })
    .await;
    let room = format!("{EP}?roomId={ROOM}");
    assert_eq!(get(&p, &room, Some(admin)).await.0, 200);
    p.standin.set_dm_history_enabled(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&p, &room, Some(admin)).await,
        (400, DISABLED.to_string())
    );
    // A non-boolean value counts as disabled, as in Rocket.Chat.
    p.standin.set_setting_value(
        "API_Enable_Direct_Message_History_EndPoint",
        serde_json::json!("true"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&p, &room, Some(admin)).await,
        (400, DISABLED.to_string())
    );
    assert!(p.standin.requests().iter().any(|r| r.path
        == "/api/v1/settings/API_Enable_Direct_Message_History_EndPoint"
        && r.header("x-user-id") == Some("admin-id")));
    // The service account cannot read it any more: fail closed.
    p.standin
        .set_permission_roles("view-privileged-setting", &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&p, &room, Some(admin)).await.0, 502);
}

/// Spellings that real routers (Restivus/connect-route, Express, Hono, WHATWG URL) may route
/// to the endpoint. With the shim strict (disabled) and the upstream permissive, none may get
/// messages or reach the upstream's endpoint.
const BYPASS: &[&str] = &[
    "/api/v1/im.messages.others",
    "/api/v1/dm.messages.others",
    "/api/v1/im.messages.others/",
    "/api/v1/im.messages.others//",
    "/api/v1/im.messages.others%20",
    "/api/v1/im.messages.others%09",
    "/api/v1/im.messages.others%20/",
    "/API/V1/IM.MESSAGES.OTHERS",
    "/api/v1/Im.Messages.Others",
    "/api/v1/DM.messages.OTHERS",
    "/api/v1/im%2Emessages%2Eothers",
    "/api/v1/im%2emessages%2eothers",
    "/api/v1/%69m.messages.others",
    "/api/v1/%64m.messages.others",
    "/api/v1/im.%6D%65ssages.others",
    "/%61pi/v1/im.messages.others",
    "/api/%76%31/im.messages.others",
    "/api/v1/im.messages.other%73",
    "/api/v1%2Fim.messages.others",
    "/api%2Fv1%2Fim.messages.others",
    "/api/v1/im%252Emessages%252Eothers",
    "//api/v1/im.messages.others",
    "/api//v1/im.messages.others",
    "/api/v1//im.messages.others",
    "/api/./v1/im.messages.others",
    "/api/v1/./im.messages.others",
    "/api/v1/x/../im.messages.others",
    "/api/v2/../v1/im.messages.others",
    "/x/y/../../api/v1/im.messages.others",
    "/api/v1/%2E/im.messages.others",
    "/api/v1/x/%2E%2E/im.messages.others",
    "/api/v1\\im.messages.others",
    "/api\\v1\\im.messages.others",
    "/api/v1%5Cim.messages.others",
    "/api/v1/im.messages.others/..%20/..",
    "/api/v1/im.messages.others;x=1",
    "/api/v1/im.messages.others%00",
    "/API/v1/dm%2Emessages%2Eothers/",
    "/api/v1/im.messages.others/.",
];

#[tokio::test]
async fn no_spelling_bypasses_the_shim() {
    let p = start(|c| c.policy.dm_history_endpoint = DmHistoryEndpoint::Disabled).await;
    assert!(BYPASS.len() >= 39);
    for path in BYPASS {
        for method in ["GET", "HEAD"] {
            let req = format!(
                "{method} {path}?roomId={ROOM} HTTP/1.1\r\nHost: x\r\nX-User-Id: admin-id\r\nX-Auth-Token: admin-token\r\nConnection: close\r\n\r\n"
            );
            let answer = raw(p.shim.addr, req.as_bytes(), Duration::from_millis(2000)).await;
            assert!(
                !answer.starts_with("HTTP/1.1 200"),
                "{method} {path} got {answer}"
            );
            assert!(
                !answer.contains("\"messages\""),
                "{method} {path} got messages: {answer}"
            );
        }
    }
    // Other methods: 405 with Allow, and nothing upstream.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = client()
            .request(
                method.parse().expect("method"),
                format!("{}{EP}?roomId={ROOM}", p.url()),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }
    let leaked: Vec<_> = p
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path != "/api/v1/me" && r.path != "/api/v1/permissions.listAll")
        .map(|r| r.target)
        .collect();
    assert!(
        leaked.is_empty(),
        "requests reached the upstream: {leaked:?}"
    );
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let p = start(|_| {}).await;
    let r = admin(client().head(format!("{}{EP}?roomId={ROOM}", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.expect("body").is_empty());
    let rec = p
        .standin
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == EP)
        .expect("recorded");
    assert_eq!(rec.method, "GET");
}

async fn status_and_body(p: &Pair, query: &str) -> (u16, Value) {
    let (s, b) = get(p, &format!("{EP}?{query}"), Some(admin)).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

#[tokio::test]
async fn parameter_rules_refuse_without_asking_the_upstream() {
    let p = start(|c| c.cache.enabled = false).await;
    let cases: &[(&str, &str, &str)] = &[
        ("roomId%5B%24ne%5D=x", "error-invalid-params", "roomId"),
        ("roomId[$ne]=x", "error-invalid-params", "roomId"),
        ("roomId[]=a", "error-invalid-params", "roomId"),
        ("roomId=a&roomId=b", "error-invalid-params", "roomId"),
        (
            "roomId=alice-idbob-id&count=-100000",
            "error-invalid-params",
            "count",
        ),
        (
            "roomId=alice-idbob-id&count=abc",
            "error-invalid-params",
            "count",
        ),
        (
            "roomId=alice-idbob-id&count=1.5",
            "error-invalid-params",
            "count",
        ),
        (
            "roomId=alice-idbob-id&offset=-1",
            "error-invalid-params",
            "offset",
        ),
        (
            "roomId=alice-idbob-id&sort=%7B%22ts%22%3A2%7D",
            "error-invalid-sort",
            "",
        ),
        (
            "roomId=alice-idbob-id&sort=%7B%22msg%22%3A1%7D",
            "error-invalid-sort",
            "",
        ),
        ("roomId=alice-idbob-id&sort=nope", "error-invalid-sort", ""),
        (
            "roomId=alice-idbob-id&query=%7B%22%24where%22%3A%22sleep(1000)%22%7D",
            "error-invalid-query",
            "",
        ),
        (
            "roomId=alice-idbob-id&query=%7B%22_id%22%3A%7B%22%24ne%22%3Anull%7D%7D",
            "error-invalid-query",
            "",
        ),
        (
            "roomId=alice-idbob-id&query=%7B%22ts%22%3A%7B%22%24gt%22%3A1%7D%7D",
            "error-invalid-query",
            "",
        ),
        (
            "roomId=alice-idbob-id&query=%7B%22%24expr%22%3A1%7D",
            "error-invalid-query",
            "",
        ),
        (
            "roomId=alice-idbob-id&query=%7B%22rid%22%3A%22other%22%7D",
            "error-invalid-query",
            "",
        ),
        (
            "roomId=alice-idbob-id&fields=%7B%22%24where%22%3A1%7D",
            "error-invalid-fields",
            "",
        ),
        (
            "roomId=alice-idbob-id&fields=%7B%22msg%22%3A1%2C%22u%22%3A0%7D",
            "error-invalid-fields",
            "",
        ),
    ];
    for (q, error_type, param) in cases {
        let (s, v) = status_and_body(&p, q).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["success"], false, "{q}");
        assert_eq!(v["errorType"], *error_type, "{q}: {v}");
        if !param.is_empty() {
            assert!(
                v["error"].as_str().unwrap_or("").contains(param),
                "{q}: {v}"
            );
        } else {
            assert_eq!(v["details"]["helperMethod"], "parseJsonQuery", "{q}: {v}");
        }
    }
    assert_eq!(endpoint_requests(&p), 0);
}

#[tokio::test]
async fn counts_are_capped_and_the_upstream_gets_the_canonical_query() {
    let p = start(|c| c.cache.enabled = false).await;
    let expect = |query: &str| format!("{EP}?{query}");
    let cases = [
        // Same logical query, different spellings -> one canonical form.
        ("count=5&roomId=alice-idbob-id&sort=%7B%22ts%22:1%7D", "roomId=alice-idbob-id&offset=0&count=5&sort=%7B%22ts%22%3A1%7D"),
        ("roomId=alice-idbob-id&sort={\"ts\":1}&count=5", "roomId=alice-idbob-id&offset=0&count=5&sort=%7B%22ts%22%3A1%7D"),
        ("roomId=alice-idbob-id", "roomId=alice-idbob-id&offset=0&count=50"),
        ("roomId=alice-idbob-id&count=0", "roomId=alice-idbob-id&offset=0&count=100"),
        ("roomId=alice-idbob-id&count=100000", "roomId=alice-idbob-id&offset=0&count=100"),
        ("roomId=alice-idbob-id&offset=7&count=3&junk=1&x[y]=2", "roomId=alice-idbob-id&offset=7&count=3"),
        (
            "roomId=alice-idbob-id&fields=%7B%22msg%22%3A1%2C%22_id%22%3A1%7D&query=%7B%22msg%22%3A%7B%22%24regex%22%3A%22message%201%22%7D%7D",
            "roomId=alice-idbob-id&offset=0&count=50&query=%7B%22msg%22%3A%7B%22%24regex%22%3A%22message%201%22%7D%7D&fields=%7B%22_id%22%3A1%2C%22msg%22%3A1%7D",
        ),
    ];
    for (sent, canonical) in cases {
        p.standin.clear_requests();
        let (s, v) = status_and_body(&p, sent).await;
        assert_eq!(s, 200, "{sent}: {v}");
        let rec = p
            .standin
            .requests()
            .into_iter()
            .find(|r| r.path == EP)
            .expect("endpoint request");
        assert_eq!(rec.target, expect(canonical), "{sent}");
        assert_eq!(rec.header("x-user-id"), Some("admin-id"));
    }
    // count=0 never means "everything".
    let (_, v) = status_and_body(&p, "roomId=alice-idbob-id&count=0").await;
    assert_eq!(v["count"], 100);
}

#[tokio::test]
async fn query_and_fields_modes() {
    let q = "roomId=alice-idbob-id&query=%7B%22msg%22%3A%22message%201%22%7D";
    let reject = start(|c| c.policy.params.query_and_fields = QueryAndFields::Reject).await;
    let (s, v) = status_and_body(&reject, q).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (400, Some("error-invalid-params"))
    );
    let strip = start(|c| c.policy.params.query_and_fields = QueryAndFields::Strip).await;
    let (s, _) = status_and_body(&strip, q).await;
    assert_eq!(s, 200);
    let rec = strip
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == EP)
        .expect("endpoint request");
    assert_eq!(
        rec.target,
        format!("{EP}?roomId=alice-idbob-id&offset=0&count=50")
    );
}

#[tokio::test]
async fn guarded_related_endpoints_get_the_checks_then_pass_through() {
    let p = start(|c| c.policy.guard_related_endpoints = true).await;
    for path in [
        "/api/v1/im.list.everyone",
        "/api/v1/dm.list.everyone",
        "/api/v1/IM.LIST.EVERYONE/",
        "/api/v1/im.counters?roomId=alice-idbob-id&userId=alice-id",
        "/api/v1/dm%2Ecounters?roomId=alice-idbob-id&userId=bob-id",
    ] {
        assert_eq!(
            get(&p, path, None).await,
            (401, MODERN_401.to_string()),
            "{path}"
        );
        assert_eq!(
            get(&p, path, Some(alice)).await,
            (403, MODERN_403.to_string()),
            "{path}"
        );
    }
    let (s, b) = get(&p, "/api/v1/im.list.everyone", Some(admin)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = get(
        &p,
        "/api/v1/im.counters?roomId=alice-idbob-id&userId=alice-id",
        Some(admin),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // Only the admin's two requests reached those endpoints.
    let n = p
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.contains("everyone") || r.path.contains("counters"))
        .count();
    assert_eq!(n, 2);
    // The setting gates them too when the shim disables the endpoint.
    let off = start(|c| {
        c.policy.guard_related_endpoints = true;
        c.policy.dm_history_endpoint = DmHistoryEndpoint::Disabled;
    })
    .await;
    assert_eq!(
        get(&off, "/api/v1/im.list.everyone", Some(admin)).await,
        (400, DISABLED.to_string())
    );
    // Without the option they pass through untouched (the upstream decides).
    let plain = start(|_| {}).await;
    assert_eq!(
        get(&plain, "/api/v1/im.list.everyone", Some(admin)).await.0,
        200
    );
    assert_eq!(plain.standin.count_path("/api/v1/me"), 0);
}

#[tokio::test]
async fn the_upstream_vulnerabilities_are_real_and_closed() {
    // Straight to the stand-in (no shim), the injection and the unlimited count work...
    let p = start(|c| c.cache.enabled = false).await;
    let direct = admin(client().get(format!("{}{EP}?roomId[$ne]=x", p.standin.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(direct.status(), 200);
    let direct = admin(client().get(format!("{}{EP}?roomId={ROOM}&count=0", p.standin.url())))
        .send()
        .await
        .expect("send");
    let v: Value = direct.json().await.expect("json");
    assert_eq!(v["count"], 120);
    // ...and through the shim they do not.
    assert_eq!(status_and_body(&p, "roomId[$ne]=x").await.0, 400);
    assert_eq!(
        status_and_body(&p, &format!("roomId={ROOM}&count=0"))
            .await
            .1["count"],
        100
    );
}
