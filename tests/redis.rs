//! The shared rate-limit budget on a real `redis-server` (Debian's, started on a free loopback
//! port): two shims, one budget; Redis down and back; `on_failure`; `SCRIPT FLUSH`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rocketchat_shim::config::{Budget, Config, OnFailure, RateLimitBackend};
use rocketchat_shim::server::{self, Running};
use rocketchat_standin::Standin;

const Q: &str = "/api/v1/im.messages.others?roomId=alice-idbob-id&count=1";

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (scripts/test.sh installs Debian's redis-server)",
            );
        let s = RedisServer { child, port };
        for _ in 0..200 {
            if s.cli(&["PING"]).as_deref() == Some("PONG") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_config(upstream: &str, redis: &str, prefix: &str, on_failure: OnFailure) -> Config {
    let mut c = base_config(upstream);
    c.cache.enabled = false;
    c.rate_limit.enabled = true;
    c.rate_limit.backend = RateLimitBackend::Redis;
    c.rate_limit.per_user = Budget {
        requests: 5,
        per: Duration::from_secs(60),
    };
    c.rate_limit.per_ip = Budget {
        requests: 1000,
        per: Duration::from_secs(60),
    };
    c.rate_limit.redis.url = redis.to_owned();
    c.rate_limit.redis.key_prefix = prefix.to_owned();
    c.rate_limit.redis.timeout = Duration::from_millis(200);
    c.rate_limit.redis.on_failure = on_failure;
    c
}

async fn hit(
    shim: &Running,
    who: fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    path: &str,
) -> reqwest::Response {
    who(client().get(format!("http://{}{path}", shim.addr)))
        .send()
        .await
        .expect("send")
}

fn auditor(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("X-User-Id", "auditor-id")
        .header("X-Auth-Token", "auditor-token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shims_share_one_budget_and_survive_redis_outages() {
    let redis = RedisServer::start(dead_port());
    let standin = Standin::start().await.expect("standin");
    standin.set_permission_roles("view-room-administration", &["admin", "auditor"]);
    let a = server::start(redis_config(
        &standin.url(),
        &redis.url(),
        "t1:",
        OnFailure::Local,
    ))
    .await
    .expect("shim a");
    let b = server::start(redis_config(
        &standin.url(),
        &redis.url(),
        "t1:",
        OnFailure::Local,
    ))
    .await
    .expect("shim b");

    // Across both shims, im. and dm. alike, exactly 5 are allowed.
    let mut allowed = 0;
    let mut remaining = Vec::new();
    for i in 0..12 {
        let shim = if i % 2 == 0 { &a } else { &b };
        let path = if i % 3 == 0 {
            Q.replace("im.", "dm.")
        } else {
            Q.to_owned()
        };
        let r = hit(shim, admin, &path).await;
        match r.status().as_u16() {
            200 => {
                allowed += 1;
                remaining.push(
                    r.headers()["x-ratelimit-remaining"]
                        .to_str()
                        .expect("ascii")
                        .to_owned(),
                );
            }
            429 => {
                assert_eq!(r.headers()["x-ratelimit-limit"], "5");
                assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
                assert_eq!(r.headers()["retry-after"], "12");
                assert!(r.headers().contains_key("x-ratelimit-reset"));
                let body = r.text().await.expect("text");
                assert_eq!(
                    body,
                    r#"{"success":false,"error":"Error, too many requests. Please slow down. You must wait 12 seconds before trying this endpoint again. [error-too-many-requests]"}"#
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(allowed, 5);
    assert_eq!(remaining, vec!["4", "3", "2", "1", "0"]);
    // Another user has their own budget.
    assert_eq!(hit(&b, auditor, Q).await.status(), 200);
    // The keys live in Redis and expire by themselves.
    let ttl: i64 = redis
        .cli(&["PTTL", "t1:user:admin-id"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(-9);
    assert!(ttl > 0 && ttl <= 61_000, "PTTL {ttl}");

    // SCRIPT FLUSH: the script is reloaded on NOSCRIPT; the budget is still spent.
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
    assert_eq!(hit(&a, admin, Q).await.status(), 429);
    assert_eq!(hit(&a, auditor, Q).await.status(), 200);

    // Redis stopped: on_failure = "local" decides in each process.
    let port = redis.port;
    redis.stop();
    let before = a
        .app
        .metrics
        .counters()
        .ratelimit_redis_fallbacks
        .load(std::sync::atomic::Ordering::Relaxed);
    let bob_like = |rb: reqwest::RequestBuilder| {
        rb.header("X-User-Id", "admin-id")
            .header("X-Auth-Token", "admin-token")
    };
    // The admin's local budget in shim a is fresh (Redis kept the shared one), so it is served.
    let r = hit(&a, bob_like, Q).await;
    assert_eq!(r.status(), 200);
    let after = a
        .app
        .metrics
        .counters()
        .ratelimit_redis_fallbacks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > before, "fallback metric did not rise");
    let m = metrics_text(a.admin_addr.expect("admin")).await;
    assert!(m.contains("rcshim_ratelimit_redis_fallbacks_total"), "{m}");
    assert!(
        m.contains("rcshim_ratelimit_redis_duration_seconds_count"),
        "{m}"
    );
    // Still ready while falling back.
    let r = client()
        .get(format!("http://{}/readyz", a.admin_addr.expect("admin")))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);

    // Redis back (empty): shared budgets again, by themselves.
    let redis = RedisServer::start(port);
    let mut ok = false;
    for _ in 0..50 {
        if redis.cli(&["EXISTS", "t1:user:admin-id"]).as_deref() == Some("1") {
            ok = true;
            break;
        }
        let _ = hit(&b, admin, Q).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the shims did not return to Redis");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_deny_answers_503_while_redis_is_down() {
    let standin = Standin::start().await.expect("standin");
    let shim = server::start(redis_config(
        &standin.url(),
        &format!("redis://127.0.0.1:{}", dead_port()),
        "t2:",
        OnFailure::Deny,
    ))
    .await
    .expect("shim starts even with Redis down");
    let r = hit(&shim, admin, Q).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"The shared rate limiter is unavailable; try again shortly [error-service-unavailable]","errorType":"error-service-unavailable"}"#
    );
    // Pass-through is unaffected.
    assert_eq!(
        client()
            .get(format!("http://{}/api/info", shim.addr))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    // on_failure = "local" with Redis down: served by the local budget.
    let local = server::start(redis_config(
        &standin.url(),
        &format!("redis://127.0.0.1:{}", dead_port()),
        "t3:",
        OnFailure::Local,
    ))
    .await
    .expect("shim");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            v.push(hit(&local, admin, Q).await.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
}

/// 9.4 on Redis: `max_rooms_per_actor` is one window per actor shared by two shims (a sorted
/// set that expires by itself), rereading is free on either; Redis killed: `on_failure`
/// (local windows, or the 503 with "deny"); Redis restarted empty: shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shims_share_the_rooms_window_and_survive_redis_outages() {
    let redis = RedisServer::start(dead_port());
    let standin = Standin::start().await.expect("standin");
    let config = |on_failure| {
        let mut c = redis_config(&standin.url(), &redis.url(), "w1:", on_failure);
        // Independent of the rate limits: they are off here.
        c.rate_limit.enabled = false;
        c.policy.max_rooms_per_actor = Some(rocketchat_shim::config::RoomsWindow {
            rooms: 2,
            per: Duration::from_secs(3600),
        });
        c
    };
    let a = server::start(config(OnFailure::Local))
        .await
        .expect("shim a");
    let b = server::start(config(OnFailure::Deny))
        .await
        .expect("shim b");
    let q = |room: &str| format!("/api/v1/im.messages.others?roomId={room}&count=1");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(hit(&a, admin, &q("alice-idbob-id")).await), 200);
    assert_eq!(status(hit(&b, admin, &q("admin-idalice-id")).await), 200);
    // Rereading on the other shim is free.
    assert_eq!(status(hit(&b, admin, &q("alice-idbob-id")).await), 200);
    assert_eq!(status(hit(&a, admin, &q("admin-idalice-id")).await), 200);
    // The third room, on either shim: the 429 with the window's headers.
    for shim in [&a, &b] {
        let r = hit(shim, admin, &q("alice-idauditor-id")).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((3590..=3600).contains(&retry), "{retry}");
    }
    assert_eq!(
        redis.cli(&["ZCARD", "w1:rooms:admin-id"]).as_deref(),
        Some("2")
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "w1:rooms:admin-id"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(-9);
    assert!(ttl > 3_590_000 && ttl <= 3_600_000, "PTTL {ttl}");

    // Redis killed: a falls back to its own (empty) window, b (deny) answers 503.
    let port = redis.port;
    redis.stop();
    assert_eq!(status(hit(&a, admin, &q("alice-idauditor-id")).await), 200);
    let r = hit(&b, admin, &q("alice-idauditor-id")).await;
    assert_eq!(r.status(), 503);

    // Restarted (empty): the window is shared again from nothing.
    let redis = RedisServer::start(port);
    let mut served = false;
    for _ in 0..100 {
        if status(hit(&b, admin, &q("alice-idauditor-id")).await) == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "b serves again once Redis is back");
    assert_eq!(status(hit(&a, admin, &q("alice-idbob-id")).await), 200);
    assert_eq!(status(hit(&a, admin, &q("admin-idalice-id")).await), 429);
    assert_eq!(
        redis.cli(&["ZCARD", "w1:rooms:admin-id"]).as_deref(),
        Some("2")
    );
}
