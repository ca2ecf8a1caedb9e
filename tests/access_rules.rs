//! The access rules beyond Rocket.Chat's (spec/shim.md 9.2 and 9.3) end to end: the reason
//! header, protected users/rooms/readers, the members lookup (cached, failing closed), the
//! list and counters endpoints, the order of checks in both error styles and the reload case.

mod common;

use std::time::Duration;

use common::*;
use rocketchat_shim::config::{ErrorStyle, RoomsWindow};

const EP: &str = "/api/v1/im.messages.others";
const ROOM: &str = "alice-idbob-id";
const GET_ROOM: &str = "/api/v1/rooms.adminRooms.getRoom";
const REASON_400: &str = r#"{"success":false,"error":"A reason is required to read others' direct messages: send it in the X-Audit-Reason header [error-reason-required]","errorType":"error-reason-required"}"#;
const PROTECTED_403: &str = r#"{"success":false,"error":"This conversation is protected [error-room-protected]","errorType":"error-room-protected"}"#;
const MODERN_401: &str = r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#;
const MODERN_403: &str = r#"{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}"#;
const LEGACY_403: &str = r#"{"success":false,"error":"unauthorized"}"#;
const DISABLED: &str = r#"{"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]","errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}}"#;

type Who = fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder;

async fn get(p: &Pair, path: &str, who: Option<Who>, reason: Option<&str>) -> (u16, String) {
    let mut rb = client().get(format!("{}{}", p.url(), path));
    if let Some(w) = who {
        rb = w(rb);
    }
    if let Some(r) = reason {
        rb = rb.header("X-Audit-Reason", r);
    }
    let r = rb.send().await.expect("send");
    let s = r.status().as_u16();
    (s, r.text().await.expect("text"))
}

fn auditor(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("X-User-Id", "auditor-id")
        .header("X-Auth-Token", "auditor-token")
}

fn endpoint_requests(p: &Pair) -> usize {
    p.standin
        .requests()
        .iter()
        .filter(|r| r.path.contains("messages.others"))
        .count()
}

#[tokio::test]
async fn reason_required_exact_body_order_and_never_upstream() {
    for style in [ErrorStyle::Modern, ErrorStyle::Legacy] {
        let p = start(|c| {
            c.policy.error_style = style;
            c.policy.require_reason = true;
            c.policy.reason_pattern = "^(INC|CASE)-[0-9]+".into();
        })
        .await;
        let room = format!("{EP}?roomId={ROOM}");
        // No permission: the permission's 403, never a hint that a reason is needed.
        let u403 = match style {
            ErrorStyle::Modern => MODERN_403,
            ErrorStyle::Legacy => LEGACY_403,
        };
        assert_eq!(get(&p, &room, Some(alice), None).await, (403, u403.into()));
        // No credential: the 401 first.
        assert_eq!(get(&p, &room, None, None).await.0, 401);
        // Permitted, no or bad reason: the 400, before the parameters (no roomId at all).
        assert_eq!(
            get(&p, &room, Some(admin), None).await,
            (400, REASON_400.into())
        );
        assert_eq!(
            get(&p, EP, Some(admin), None).await,
            (400, REASON_400.into())
        );
        assert_eq!(
            get(&p, &room, Some(admin), Some("curious")).await,
            (400, REASON_400.into())
        );
        assert_eq!(
            get(&p, &room, Some(admin), Some("  ")).await,
            (400, REASON_400.into())
        );
        assert_eq!(endpoint_requests(&p), 0);
        // A good reason: the answer, and the header never reaches the upstream.
        let (s, _) = get(&p, &room, Some(admin), Some(" INC-1234 leaver ")).await;
        assert_eq!(s, 200);
        assert_eq!(endpoint_requests(&p), 1);
        assert!(p
            .standin
            .requests()
            .iter()
            .all(|r| r.header("x-audit-reason").is_none()));
    }
}

#[tokio::test]
async fn reason_comes_after_the_setting_in_both_styles() {
    for style in [ErrorStyle::Modern, ErrorStyle::Legacy] {
        let p = start(|c| {
            c.policy.error_style = style;
            c.policy.require_reason = true;
            c.policy.dm_history_endpoint = rocketchat_shim::config::DmHistoryEndpoint::Disabled;
        })
        .await;
        let room = format!("{EP}?roomId={ROOM}");
        assert_eq!(
            get(&p, &room, Some(admin), None).await,
            (400, DISABLED.into())
        );
    }
}

#[tokio::test]
async fn reason_is_stripped_from_guarded_requests() {
    let p = start(|c| {
        c.policy.guard_related_endpoints = true;
    })
    .await;
    let (s, _) = get(
        &p,
        &format!("/api/v1/im.counters?roomId={ROOM}&userId=bob-id"),
        Some(admin),
        Some("INC-1"),
    )
    .await;
    assert_eq!(s, 200);
    let forwarded: Vec<_> = p
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("im.counters"))
        .collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].header("x-audit-reason"), None);
}

#[tokio::test]
async fn protected_users_by_id_and_username_in_both_styles() {
    for style in [ErrorStyle::Modern, ErrorStyle::Legacy] {
        for who in ["bob", "bob-id"] {
            let p = start(|c| {
                c.policy.error_style = style;
                c.policy.protected_users = vec![who.into()];
            })
            .await;
            let room = format!("{EP}?roomId={ROOM}");
            assert_eq!(
                get(&p, &room, Some(admin), None).await,
                (403, PROTECTED_403.into()),
                "{who}"
            );
            // Without the permission: the permission's 403, not the protection's.
            let u403 = match style {
                ErrorStyle::Modern => MODERN_403,
                ErrorStyle::Legacy => LEGACY_403,
            };
            assert_eq!(get(&p, &room, Some(alice), None).await, (403, u403.into()));
            // Another room is served.
            let (s, _) = get(
                &p,
                &format!("{EP}?roomId=admin-idalice-id"),
                Some(admin),
                None,
            )
            .await;
            assert_eq!(s, 200);
            assert_eq!(endpoint_requests(&p), 1);
        }
    }
}

#[tokio::test]
async fn protected_rooms_and_readers() {
    for reader in ["admin", "admin-id"] {
        let p = start(|c| {
            c.policy.protected_rooms = vec![ROOM.into()];
            c.policy.protected_readers = vec![reader.into()];
        })
        .await;
        p.standin
            .set_permission_roles("view-room-administration", &["admin", "auditor"]);
        let room = format!("{EP}?roomId={ROOM}");
        assert_eq!(
            get(&p, &room, Some(auditor), None).await,
            (403, PROTECTED_403.into())
        );
        assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    }
}

#[tokio::test]
async fn members_are_cached_and_shared() {
    let p = start(|c| {
        c.cache.enabled = false;
        c.policy.protected_users = vec!["carol".into()];
    })
    .await;
    let room = format!("{EP}?roomId={ROOM}");
    let answers =
        futures_util::future::join_all((0..8).map(|_| get(&p, &room, Some(admin), None))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(p.standin.count_path(GET_ROOM), 1);
    assert_eq!(endpoint_requests(&p), 9);
}

#[tokio::test]
async fn members_lookup_fails_closed_with_protected_lists() {
    let p = start(|c| {
        c.policy.protected_users = vec!["carol".into()];
        c.upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    // A 4xx (unknown room): Rocket.Chat's own error-room-not-found, nothing else asked.
    assert_eq!(
        get(&p, &format!("{EP}?roomId=nope"), Some(admin), None).await,
        (
            400,
            r#"{"success":false,"error":"No direct message room found by the id of: nope [error-room-not-found]","errorType":"error-room-not-found"}"#.into()
        )
    );
    assert_eq!(endpoint_requests(&p), 0);
    // A lookup that times out: 504, nothing else asked.
    p.standin.set_delay(GET_ROOM, Duration::from_secs(5));
    let (s, _) = get(&p, &format!("{EP}?roomId={ROOM}"), Some(admin), None).await;
    assert_eq!(s, 504);
    assert_eq!(endpoint_requests(&p), 0);
}

#[tokio::test]
async fn without_protected_lists_a_failed_lookup_does_not_stop_the_read() {
    let p = start(|c| {
        c.upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    // No trail, no protected list: the lookup is not even made.
    p.standin.set_delay(GET_ROOM, Duration::from_secs(5));
    assert_eq!(
        get(&p, &format!("{EP}?roomId={ROOM}"), Some(admin), None)
            .await
            .0,
        200
    );
    assert_eq!(p.standin.count_path(GET_ROOM), 0);
}

#[tokio::test]
async fn a_room_protected_by_a_reload_is_never_served_from_the_cache() {
    let p = start(|c| {
        c.cache.enabled = true;
    })
    .await;
    let room = format!("{EP}?roomId={ROOM}");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(endpoint_requests(&p), 1, "second read from the cache");
    let mut c = base_config(&p.standin.url());
    c.cache.enabled = true;
    c.policy.protected_users = vec!["alice".into()];
    c.policy.require_reason = true;
    p.shim.reload(c.clone()).expect("reload");
    assert_eq!(
        get(&p, &room, Some(admin), None).await,
        (400, REASON_400.into())
    );
    assert_eq!(
        get(&p, &room, Some(admin), Some("INC-1")).await,
        (403, PROTECTED_403.into())
    );
    // And back: the same settings again serve it (from the kept cache).
    c.policy.protected_users = vec![];
    c.policy.require_reason = false;
    p.shim.reload(c).expect("reload");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(endpoint_requests(&p), 1);
}

#[tokio::test]
async fn list_everyone_refused_while_a_protected_list_is_set() {
    for guard in [false, true] {
        let p = start(|c| {
            c.policy.guard_related_endpoints = guard;
            c.policy.protected_users = vec!["bob".into()];
            c.policy.protected_readers = vec!["auditor".into()];
        })
        .await;
        for path in ["/api/v1/im.list.everyone", "/api/v1/dm.list.everyone"] {
            assert_eq!(get(&p, path, None, None).await, (401, MODERN_401.into()));
            assert_eq!(
                get(&p, path, Some(admin), None).await,
                (403, PROTECTED_403.into()),
                "{path} guard={guard}"
            );
        }
        assert_eq!(
            p.standin
                .requests()
                .iter()
                .filter(|r| r.path.contains("list.everyone"))
                .count(),
            0
        );
    }
}

#[tokio::test]
async fn counters_for_a_protected_room_refused() {
    let p = start(|c| {
        c.policy.guard_related_endpoints = true;
        c.policy.protected_rooms = vec![ROOM.into()];
    })
    .await;
    for path in [
        format!("/api/v1/im.counters?roomId={ROOM}"),
        format!("/api/v1/dm.counters?roomId=admin-idalice-id&roomId={ROOM}"),
        format!("/api/v1/im.counters?roomId[]={ROOM}"),
    ] {
        assert_eq!(
            get(&p, &path, Some(admin), None).await,
            (403, PROTECTED_403.into()),
            "{path}"
        );
    }
    let (s, _) = get(
        &p,
        "/api/v1/im.counters?roomId=admin-idalice-id",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, 200);
}

/// A final review found the protected counters check skipped by spellings `qs` reads as
/// `roomId` (`[roomId]=`, its encoded form) and by `username`, which older Rocket.Chat counters
/// handlers resolve to the DM with that user. Both guard modes.
#[tokio::test]
async fn counters_cannot_hide_a_protected_room_behind_qs_spellings_or_username() {
    for guard in [true, false] {
        let p = start(|c| {
            c.policy.guard_related_endpoints = guard;
            c.policy.protected_rooms = vec![ROOM.into()];
        })
        .await;
        for path in [
            format!("/api/v1/im.counters?[roomId]={ROOM}"),
            format!("/api/v1/im.counters?%5BroomId%5D={ROOM}"),
            format!("/api/v1/dm.counters?roomId[0]={ROOM}"),
        ] {
            assert_eq!(
                get(&p, &path, Some(admin), None).await,
                (403, PROTECTED_403.into()),
                "{path} (guard {guard})"
            );
        }
        for path in [
            "/api/v1/im.counters?username=alice&userId=admin-id".to_string(),
            "/api/v1/im.counters?roomId=admin-idalice-id&username=alice".to_string(),
            "/api/v1/im.counters?username[]=alice".to_string(),
        ] {
            let (s, body) = get(&p, &path, Some(admin), None).await;
            assert_eq!(s, 400, "{path} (guard {guard}): {body}");
            assert!(
                body.contains(r#""errorType":"error-invalid-params""#),
                "{body}"
            );
        }
        assert_eq!(p.standin.count_path("/api/v1/im.counters"), 0);
        assert_eq!(p.standin.count_path("/api/v1/dm.counters"), 0);
    }
}

fn rooms_limit(rooms: u32) -> Option<RoomsWindow> {
    Some(RoomsWindow {
        rooms,
        per: Duration::from_secs(3600),
    })
}

/// The record of one request id in the trail at `path`.
fn record_of(path: &std::path::Path, request_id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("trail");
    let found: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "{request_id}");
    found[0].clone()
}

#[tokio::test]
async fn distinct_rooms_window_refuses_room_n_plus_one_with_an_alert() {
    let dir = common::proc::tempdir("rooms-window");
    let path = dir.join("audit.jsonl");
    let p = start(|c| {
        c.audit.enabled = true;
        c.audit.path = path.clone();
        c.policy.max_rooms_per_actor = rooms_limit(2);
    })
    .await;
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let read = |room: &str, id: &str| {
        admin(client().get(format!("{}{EP}?roomId={room}", p.url()))).header("X-Request-Id", id)
    };
    // A room the upstream refuses is no read: given back.
    assert_eq!(read("nope", "n0").send().await.expect("send").status(), 400);
    for (room, id) in [
        (ROOM, "r1"),
        ("admin-idalice-id", "r2"),
        (ROOM, "r3"),
        ("admin-idalice-id", "r4"),
    ] {
        let r = read(room, id).send().await.expect("send");
        assert_eq!(r.status(), 200, "{id}: rereading is free");
    }
    let r = read("alice-idauditor-id", "r5").send().await.expect("send");
    assert_eq!(r.status(), 429);
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("0"));
    let retry: u64 = h("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert!(h("x-ratelimit-reset").is_some());
    let body = r.text().await.expect("body");
    assert!(body.contains("error-too-many-requests"), "{body}");
    assert_eq!(record_of(&path, "r5")["alert"], true);
    assert_eq!(record_of(&path, "r4")["alert"], false);
    let m = metrics_text(p.shim.admin_addr.expect("admin")).await;
    assert_eq!(metric_value(&m, "rcshim_audit_alerts_total"), Some("1"));
    // Another actor has a window of their own.
    let r = auditor(client().get(format!("{}{EP}?roomId=alice-idauditor-id", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_rooms_window_survives_a_reload_that_keeps_its_setting() {
    let p = start(|c| {
        c.policy.max_rooms_per_actor = rooms_limit(1);
    })
    .await;
    let room = |r: &str| format!("{EP}?roomId={r}");
    assert_eq!(get(&p, &room(ROOM), Some(admin), None).await.0, 200);
    assert_eq!(
        get(&p, &room("admin-idalice-id"), Some(admin), None)
            .await
            .0,
        429
    );
    let mut c = base_config(&p.standin.url());
    c.policy.max_rooms_per_actor = rooms_limit(1);
    c.policy.require_reason = true;
    p.shim.reload(c.clone()).expect("reload");
    assert_eq!(
        get(&p, &room("admin-idalice-id"), Some(admin), Some("x"))
            .await
            .0,
        429,
        "window kept"
    );
    c.policy.max_rooms_per_actor = rooms_limit(2);
    p.shim.reload(c).expect("reload");
    assert_eq!(
        get(&p, &room("admin-idalice-id"), Some(admin), Some("x"))
            .await
            .0,
        200,
        "a new setting starts new windows"
    );
}

/// Without `guard_related_endpoints`, a protected list still routes the counters through the
/// shim: a plain user's own counters keep working (their members lookup is refused by the
/// server, which then answers as it always does), a protected room is refused to everyone but
/// the readers, and an administrator asking about a protected user's DM gets the 403.
#[tokio::test]
async fn unguarded_counters_stay_usable_for_plain_users() {
    let p = start(|c| {
        c.policy.protected_users = vec!["bob".into()];
        c.policy.protected_rooms = vec!["admin-idalice-id".into()];
    })
    .await;
    let (s, body) = get(
        &p,
        "/api/v1/im.counters?roomId=alice-idauditor-id",
        Some(alice),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        get(
            &p,
            "/api/v1/im.counters?roomId=admin-idalice-id",
            Some(alice),
            None
        )
        .await,
        (403, PROTECTED_403.into())
    );
    assert_eq!(
        get(
            &p,
            &format!("/api/v1/im.counters?roomId={ROOM}&userId=bob-id"),
            Some(admin),
            None
        )
        .await,
        (403, PROTECTED_403.into())
    );
}

#[tokio::test]
async fn a_missing_reason_spends_no_per_user_budget() {
    let p = start(|c| {
        c.policy.require_reason = true;
        c.rate_limit.enabled = true;
        c.rate_limit.per_user = rocketchat_shim::config::Budget {
            requests: 1,
            per: Duration::from_secs(60),
        };
    })
    .await;
    let room = format!("{EP}?roomId={ROOM}");
    for _ in 0..3 {
        assert_eq!(
            get(&p, &room, Some(admin), None).await,
            (400, REASON_400.into())
        );
    }
    assert_eq!(get(&p, &room, Some(admin), Some("INC-1")).await.0, 200);
    assert_eq!(get(&p, &room, Some(admin), Some("INC-1")).await.0, 429);
}

#[tokio::test]
async fn the_members_cache_survives_a_reload_unless_members_ttl_changes() {
    let p = start(|c| {
        c.cache.enabled = false;
        c.policy.protected_users = vec!["carol".into()];
    })
    .await;
    let room = format!("{EP}?roomId={ROOM}");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(p.standin.count_path(GET_ROOM), 1);
    let mut c = base_config(&p.standin.url());
    c.cache.enabled = false;
    c.policy.protected_users = vec!["carol".into(), "dave".into()];
    p.shim.reload(c.clone()).expect("reload");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(p.standin.count_path(GET_ROOM), 1, "kept");
    c.policy.members_ttl = Duration::from_secs(120);
    p.shim.reload(c).expect("reload");
    assert_eq!(get(&p, &room, Some(admin), None).await.0, 200);
    assert_eq!(
        p.standin.count_path(GET_ROOM),
        2,
        "a new members_ttl starts afresh"
    );
}
