//! The shape of `/metrics` (every `# HELP` and `# TYPE` line, every sample name with its label
//! set, values left out) against a golden list committed in `tests/golden/`, taken from the
//! hand-written encoder that came before `prometheus-client`. The acceptance tests and the
//! dashboards read these names, so a change of encoder must not rename, retype, relabel or
//! re-word anything. To record a new golden list on purpose (a metric added), run with
//! `BLESS_METRICS=1` and review the diff.

mod common;

use std::time::Duration;

use common::*;
use rocketchat_shim::metrics::{Metrics, RouteClass};

const ROOM_Q: &str = "/api/v1/im.messages.others?roomId=alice-idbob-id&count=2";

/// The lines that name things, values cut off, sorted: the order of families is not part of
/// the contract, their names, types, help texts and label sets are.
fn shape(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            if l.starts_with('#') {
                l.to_owned()
            } else {
                // `name{labels} value`: label values hold no space in this shim's metrics.
                let key = l.rsplit_once(' ').map(|(k, _)| k).unwrap_or(l);
                // The version changes with every release, not with the encoder.
                key.replace(env!("CARGO_PKG_VERSION"), "<version>")
            }
        })
        .collect();
    lines.sort();
    lines
}

/// Compares with `tests/golden/<file>`, or records it when `BLESS_METRICS` is set.
fn check(file: &str, text: &str) {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    // The whole text, values included, kept beside the build for a reader comparing encoders.
    let _ = std::fs::write(format!("{}/{file}", env!("CARGO_TARGET_TMPDIR")), text);
    let got = shape(text).join("\n") + "\n";
    if std::env::var_os("BLESS_METRICS").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden list");
    if got != want {
        let want_lines: Vec<&str> = want.lines().collect();
        let got_lines: Vec<&str> = got.lines().collect();
        let missing: Vec<&&str> = want_lines
            .iter()
            .filter(|l| !got_lines.contains(l))
            .collect();
        let extra: Vec<&&str> = got_lines
            .iter()
            .filter(|l| !want_lines.contains(l))
            .collect();
        panic!("/metrics differs from {file}\nmissing: {missing:#?}\nextra: {extra:#?}\nfull text:\n{text}");
    }
}

/// A fresh shim with the cache and the local rate limits on, after one pass-through request
/// and two endpoint requests (a miss and a hit): every family it lists, with its labels.
#[tokio::test]
async fn metrics_of_a_fresh_shim_keep_their_names_types_help_and_labels() {
    let p = start(|c| c.rate_limit.enabled = true).await;
    let r = client()
        .get(format!("{}/api/info", p.url()))
        .send()
        .await
        .expect("pass");
    assert_eq!(r.status(), 200);
    for _ in 0..2 {
        let r = admin(client().get(format!("{}{ROOM_Q}", p.url())))
            .send()
            .await
            .expect("endpoint");
        assert_eq!(r.status(), 200);
    }
    let text = metrics_text(p.shim.admin_addr.expect("admin on")).await;
    check("metrics_names.txt", &text);
}

/// The families listed only on some configurations: the Redis latency histogram (Redis
/// backend) and every route class of the request counters.
#[test]
fn metrics_with_the_redis_backend_keep_their_names_types_help_and_labels() {
    let m = Metrics::new();
    m.set_redis_backend(true);
    m.observe_redis(Duration::from_millis(2));
    for (class, status) in [
        (RouteClass::Passthrough, 502),
        (RouteClass::Websocket, 101),
        (RouteClass::Intercepted, 429),
        (RouteClass::Guarded, 403),
    ] {
        m.request(class, status, Duration::from_millis(3));
    }
    m.upstream_error("busy");
    m.register_gauge("rcshim_test_gauge", "A gauge read at render time.", || 2.0);
    check("metrics_names_redis.txt", &m.render());
}
