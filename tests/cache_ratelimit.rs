//! The endpoint's cache and rate limits (spec/shim.md §5-6).

mod common;

use std::time::Duration;

use common::*;
use rocketchat_shim::config::Budget;
use serde_json::Value;

const EP: &str = "/api/v1/im.messages.others";
const Q: &str = "/api/v1/im.messages.others?roomId=alice-idbob-id&count=5";

fn auditor(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("X-User-Id", "auditor-id")
        .header("X-Auth-Token", "auditor-token")
}

async fn admin_get(p: &Pair, path: &str) -> reqwest::Response {
    admin(client().get(format!("{}{path}", p.url())))
        .send()
        .await
        .expect("send")
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn ten_identical_requests_make_one_upstream_call_then_ttl_expires() {
    let p = start(|c| c.cache.ttl = Duration::from_millis(600)).await;
    let first = admin_get(&p, Q).await;
    assert_eq!(cache_status(&first), "rocketchat-shim; fwd=miss; stored");
    assert_eq!(first.headers()["cache-control"], "no-store");
    let body = first.text().await.expect("body");
    for _ in 0..9 {
        let r = admin_get(&p, Q).await;
        let cs = cache_status(&r);
        assert!(cs.starts_with("rocketchat-shim; hit; ttl="), "{cs}");
        assert_eq!(r.text().await.expect("body"), body);
    }
    assert_eq!(p.standin.count_path(EP), 1);
    // The same logical query spelled differently is the same entry.
    let r = admin_get(
        &p,
        "/api/v1/dm.messages.others?count=5&roomId=alice-idbob-id",
    )
    .await;
    assert!(cache_status(&r).contains("hit"));
    assert_eq!(p.standin.count_path(EP), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = admin_get(&p, Q).await;
    assert_eq!(cache_status(&r), "rocketchat-shim; fwd=miss; stored");
    assert_eq!(p.standin.count_path(EP), 2);
}

#[tokio::test]
async fn each_user_has_their_own_entry() {
    let p = start(|_| {}).await;
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "auditor"]);
    assert_eq!(admin_get(&p, Q).await.status(), 200);
    let r = auditor(client().get(format!("{}{Q}", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(cache_status(&r), "rocketchat-shim; fwd=miss; stored");
    assert_eq!(p.standin.count_path(EP), 2);
}

#[tokio::test]
async fn hundred_concurrent_misses_make_exactly_one_upstream_call() {
    let p = start(|_| {}).await;
    p.standin.set_delay(EP, Duration::from_millis(400));
    let url = format!("{}{Q}", p.url());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let r = admin(client().get(url)).send().await.expect("send");
            (r.status().as_u16(), cache_status(&r))
        }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let (s, cs) = t.await.expect("join");
        assert_eq!(s, 200);
        if cs.contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(p.standin.count_path(EP), 1);
    assert!(collapsed >= 90, "{collapsed} collapsed");
}

#[tokio::test]
async fn the_leader_disconnecting_does_not_fail_the_others() {
    let p = start(|_| {}).await;
    p.standin.set_delay(EP, Duration::from_millis(600));
    let url = format!("{}{Q}", p.url());
    // The leader gives up after 150 ms.
    let leader = admin(
        reqwest::Client::builder()
            .timeout(Duration::from_millis(150))
            .build()
            .expect("client")
            .get(&url),
    )
    .send()
    .await;
    assert!(leader.is_err(), "the leader should have timed out");
    // Followers that joined while it was running still get the answer.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            admin(client().get(url))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), 200);
    }
    assert_eq!(p.standin.count_path(EP), 1);
}

#[tokio::test]
async fn errors_are_never_cached_and_the_policy_runs_before_the_cache() {
    let p = start(|_| {}).await;
    for _ in 0..2 {
        let r = admin_get(&p, "/api/v1/im.messages.others?roomId=nope").await;
        assert_eq!(r.status(), 400);
        assert_eq!(cache_status(&r), "rocketchat-shim; fwd=miss");
    }
    assert_eq!(p.standin.count_path(EP), 2);
    // The admin's page is cached...
    assert_eq!(admin_get(&p, Q).await.status(), 200);
    assert!(cache_status(&admin_get(&p, Q).await).contains("hit"));
    // ...yet alice is still refused, and a bad token is still not logged in.
    let r = alice(client().get(format!("{}{Q}", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(cache_status(&r), "rocketchat-shim; fwd=bypass");
    let r = client()
        .get(format!("{}{Q}", p.url()))
        .header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "forged")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}{Q}", p.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn no_cache_refreshes_the_entry() {
    let p = start(|_| {}).await;
    assert_eq!(admin_get(&p, Q).await.status(), 200);
    let r = admin(client().get(format!("{}{Q}", p.url())))
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .expect("send");
    assert_eq!(cache_status(&r), "rocketchat-shim; fwd=request; stored");
    assert_eq!(p.standin.count_path(EP), 2);
    assert!(cache_status(&admin_get(&p, Q).await).contains("hit"));
    assert_eq!(p.standin.count_path(EP), 2);
}

#[tokio::test]
async fn cache_off_goes_upstream_every_time() {
    let p = start(|c| c.cache.enabled = false).await;
    for _ in 0..3 {
        let r = admin_get(&p, Q).await;
        assert_eq!(
            cache_status(&r),
            "rocketchat-shim; fwd=bypass; detail=disabled"
        );
    }
    assert_eq!(p.standin.count_path(EP), 3);
}

#[tokio::test]
async fn max_bytes_bounds_the_cache() {
    let max = 16 * 1024;
    let p = start(|c| c.cache.max_bytes = max).await;
    let mut body_bytes = 0;
    for count in 1..=40 {
        let r = admin_get(&p, &format!("{EP}?roomId=alice-idbob-id&count={count}")).await;
        assert_eq!(r.status(), 200);
        body_bytes += r.bytes().await.expect("body").len() as u64;
    }
    assert!(
        body_bytes > 4 * max,
        "the test must overfill the cache ({body_bytes})"
    );
    let cache = p
        .shim
        .app
        .generation()
        .endpoint
        .cache()
        .expect("cache on")
        .clone();
    let size = cache.weighted_size();
    assert!(size <= max, "cache holds {size} > {max}");
    assert!(cache.entry_count() < 40);
    let evictions = p
        .shim
        .app
        .metrics
        .counters()
        .cache_evictions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(evictions > 0);
    let metrics = metrics_text(p.shim.admin_addr.expect("admin on")).await;
    assert!(metrics.contains("rcshim_cache_bytes "), "{metrics}");
    assert!(
        metrics.contains("rcshim_cache_stores_total 40"),
        "{metrics}"
    );
}

fn limited(c: &mut rocketchat_shim::config::Config, user: u32, ip: u32) {
    c.rate_limit.enabled = true;
    c.rate_limit.per_user = Budget {
        requests: user,
        per: Duration::from_secs(60),
    };
    c.rate_limit.per_ip = Budget {
        requests: ip,
        per: Duration::from_secs(60),
    };
    c.cache.enabled = false;
}

fn header_u64(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()[name]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn per_user_budget_with_rocketchat_429_and_headers() {
    let p = start(|c| limited(c, 3, 1000)).await;
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = admin_get(&p, Q).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_u64(&r, "x-ratelimit-limit"), 3);
        remaining.push(header_u64(&r, "x-ratelimit-remaining"));
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    // im. and dm. share the budget: the 4th, via dm., is refused.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let r = admin_get(&p, "/api/v1/dm.messages.others?roomId=alice-idbob-id").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header_u64(&r, "x-ratelimit-limit"), 3);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 0);
    let reset = header_u64(&r, "x-ratelimit-reset");
    // 3 per minute: the next request is allowed in about 20 s; the reset is epoch ms.
    assert!(
        reset >= before + 19_000 && reset <= before + 21_000,
        "reset {reset} vs now {before}"
    );
    assert_eq!(header_u64(&r, "retry-after"), 20);
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"Error, too many requests. Please slow down. You must wait 20 seconds before trying this endpoint again. [error-too-many-requests]"}"#
    );
    assert_eq!(p.standin.count_path(EP), 3);
    // Another user is unaffected.
    let r = auditor(client().get(format!("{}{Q}", p.url())))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 2);
    // Refused callers do not spend the per-user budget.
    for _ in 0..5 {
        let r = alice(client().get(format!("{}{Q}", p.url())))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 403);
    }
    assert_eq!(
        p.shim
            .app
            .metrics
            .counters()
            .ratelimit_rejected_user
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn per_ip_budget_stops_made_up_tokens_before_me() {
    let p = start(|c| limited(c, 10, 5)).await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = client()
            .get(format!("{}{Q}", p.url()))
            .header("X-User-Id", format!("user-{i}"))
            .header("X-Auth-Token", format!("made-up-{i}"))
            // A client-chosen X-Real-IP must not give it a fresh budget.
            .header("X-Real-IP", format!("10.0.0.{i}"))
            .header("X-Forwarded-For", format!("10.0.1.{i}"))
            .send()
            .await
            .expect("send");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(header_u64(&r, "x-ratelimit-limit"), 5);
            assert!(r.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15);
    assert_eq!(p.standin.count_path("/api/v1/me"), 5);
    // Pass-through traffic is never limited.
    for _ in 0..20 {
        assert_eq!(
            client()
                .get(format!("{}/api/info", p.url()))
                .send()
                .await
                .expect("send")
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn rate_limits_off_means_no_headers_and_no_429() {
    let p = start(|c| {
        c.rate_limit.enabled = false;
        c.cache.enabled = false;
    })
    .await;
    for _ in 0..30 {
        let r = admin_get(&p, Q).await;
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("x-ratelimit-limit"));
    }
    let v: Value = admin_get(&p, Q).await.json().await.expect("json");
    assert_eq!(v["success"], true);
}
