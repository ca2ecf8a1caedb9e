//! Operating the shim: admin endpoints, metrics, the access log (and what it never says),
//! SIGHUP reload, SIGTERM drain with a slow request and an open websocket.

mod common;

use std::time::Duration;

use common::proc::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::Standin;
use tokio_tungstenite::tungstenite::Message;

const ROOM_Q: &str = "/api/v1/im.messages.others?roomId=alice-idbob-id&count=2";

#[tokio::test]
async fn admin_endpoints_livez_readyz_metrics() {
    let p = start(|_| {}).await;
    let admin_url = p.admin_url();
    let r = client()
        .get(format!("{admin_url}/livez"))
        .send()
        .await
        .expect("livez");
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{admin_url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    // Some traffic of each class.
    let _ = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("pass");
    let _ = admin(client().get(format!("{}{ROOM_Q}", p.url())))
        .send()
        .await
        .expect("endpoint");
    let _ = admin(client().get(format!("{}{ROOM_Q}", p.url())))
        .send()
        .await
        .expect("endpoint");
    let m = client()
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(m.status(), 200);
    assert!(m.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    let text = m.text().await.expect("text");
    for needle in [
        "rcshim_build_info{version=",
        "rcshim_requests_total{route=\"passthrough\",status=\"200\"} 1",
        "rcshim_requests_total{route=\"intercepted\",status=\"200\"} 2",
        "rcshim_request_duration_seconds_bucket{route=\"intercepted\",le=\"+Inf\"} 2",
        "rcshim_upstream_errors_total{kind=\"connect\"} 0",
        "rcshim_identity_upstream_calls_total 1",
        "rcshim_identity_cache_hits_total 1",
        "rcshim_cache_hits_total 1",
        "rcshim_cache_misses_total 1",
        "rcshim_cache_entries 1",
        "rcshim_open_tunnels 0",
        "rcshim_ratelimit_rejected_user_total 0",
        "rcshim_config_reloads_ok_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The upstream gone for long enough: not ready.
    p.shim.app.generation().upstream.forget_last_answer();
    p.standin
        .set_fault(rocketchat_standin::Fault::HangBeforeHead);
    let r = client()
        .get(format!("{admin_url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    p.standin.set_fault(rocketchat_standin::Fault::None);
    // Draining: not ready either.
    p.shim.shutdown();
    let r = client()
        .get(format!("{admin_url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request_and_no_secrets() {
    let standin = Standin::start().await.expect("standin");
    let dir = tempdir("accesslog");
    let cfg = write_config(
        &dir,
        &standin.url(),
        "[policy]\ndm_history_endpoint = \"enabled\"\n[rate_limit]\nenabled = false\n",
    );
    let mut p = spawn_proc(&cfg);
    let base = format!("http://{}", p.addr);
    let c = client();
    let secrets = [
        "admin-token",
        "admin-oauth-token",
        "sekrit-cookie",
        "made-up-secret",
    ];
    let _ = admin(
        c.get(format!("{base}{ROOM_Q}"))
            .header("Cookie", "rc_token=sekrit-cookie"),
    )
    .send()
    .await
    .expect("send");
    let _ = c
        .get(format!("{base}{ROOM_Q}&access_token=admin-oauth-token"))
        .send()
        .await
        .expect("send");
    let _ = c
        .get(format!("{base}{ROOM_Q}"))
        .header("Authorization", "Bearer admin-oauth-token")
        .send()
        .await
        .expect("send");
    let _ = c
        .get(format!("{base}{ROOM_Q}"))
        .header("X-User-Id", "x")
        .header("X-Auth-Token", "made-up-secret")
        .send()
        .await
        .expect("send");
    let _ = c
        .get(format!("{base}/api/info?access_token=admin-oauth-token"))
        .header("Cookie", "rc_token=sekrit-cookie")
        .send()
        .await
        .expect("send");
    let _ = c
        .get(format!("{base}/api/v1/me"))
        .header("X-User-Id", "admin-id")
        .header("X-Auth-Token", "admin-token")
        .send()
        .await
        .expect("send");
    signal(&p.child, "TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut p.child, Duration::from_secs(10));
        (code, p.drain_lines())
    })
    .await
    .expect("join");
    let (code, lines) = code;
    assert_eq!(code, 0);
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 6, "{lines:#?}");
    let first = &access[0];
    for field in [
        "timestamp",
        "request_id",
        "client",
        "method",
        "path",
        "status",
        "duration_ms",
        "route",
    ] {
        assert!(!first[field].is_null(), "missing {field}: {first}");
    }
    assert_eq!(first["route"], "intercepted");
    assert_eq!(first["user_id"], "admin-id");
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["path"], "/api/v1/im.messages.others");
    assert_eq!(access[4]["path"], "/api/info");
    assert_eq!(access[4]["route"], "passthrough");
    for line in &lines {
        for s in secrets {
            assert!(!line.contains(s), "secret {s} in log line {line}");
        }
        assert!(!line.contains("access_token"), "query in log line {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let standin = Standin::start().await.expect("standin");
    let dir = tempdir("reload");
    let enabled = "[policy]\ndm_history_endpoint = \"enabled\"\n[rate_limit]\nenabled = false\n";
    let cfg = write_config(&dir, &standin.url(), enabled);
    let p = spawn_proc(&cfg);
    let base = format!("http://{}", p.addr);
    let c = client();
    // An open websocket before the reload.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/websocket", p.addr))
        .await
        .expect("ws");
    let status = |c: reqwest::Client| {
        let url = format!("{base}{ROOM_Q}");
        async move {
            admin(c.get(url))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(c.clone()).await, 200);

    // Valid: the endpoint becomes disabled for new requests.
    write_config(
        &dir,
        &standin.url(),
        "[policy]\ndm_history_endpoint = \"disabled\"\n[rate_limit]\nenabled = false\n",
    );
    signal(&p.child, "HUP");
    assert!(p
        .wait_line("configuration reloaded", Duration::from_secs(5))
        .is_some());
    assert_eq!(status(c.clone()).await, 400);

    // Invalid: logged with its line, the running config stays.
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[policy]\ndm_history_endpoint = \"sometimes\"\n",
    )
    .expect("write");
    signal(&p.child, "HUP");
    let line = p
        .wait_line("reload refused", Duration::from_secs(5))
        .expect("refusal logged");
    assert!(line.contains("config.toml:4:"), "{line}");
    assert_eq!(status(c.clone()).await, 400);

    // The websocket opened before both reloads still works.
    ws.send(Message::Text("still here".into()))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::Text("still here".into())
    );

    let m = metrics_text(&p.admin).await;
    assert!(m.contains("rcshim_config_reloads_ok_total 1"), "{m}");
    assert!(m.contains("rcshim_config_reloads_failed_total 1"), "{m}");
    let mut child = p.child;
    signal(&child, "TERM");
    drop(ws);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_slow_request_and_an_open_tunnel_then_exits_0() {
    let standin = Standin::start().await.expect("standin");
    standin.set_delay("/api/info", Duration::from_millis(1200));
    let dir = tempdir("drain");
    let cfg = write_config(&dir, &standin.url(), "");
    let p = spawn_proc(&cfg);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/websocket", p.addr))
        .await
        .expect("ws");
    let url = format!("http://{}/api/info", p.addr);
    let slow =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    for _ in 0..200 {
        if standin.count_path("/api/info") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&p.child, "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready, not accepting, but the tunnel still carries messages.
    let r = client()
        .get(format!("http://{}/readyz", p.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    assert!(tokio::net::TcpStream::connect(&p.addr).await.is_err());
    ws.send(Message::Text("during drain".into()))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::Text("during drain".into())
    );
    assert_eq!(
        slow.await.expect("join").expect("slow request finished"),
        200
    );
    // The process waits for the tunnel...
    let mut child = p.child;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited with a tunnel open"
    );
    // ...and exits 0 once it closes.
    ws.close(None).await.expect("close");
    drop(ws);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, 0);
}
