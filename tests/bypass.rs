//! The path classification end to end, behind a lenient front router (spec/shim.md §1).
//!
//! The stand-in is put behind a model of an nginx whose `proxy_pass` carries a URI
//! (`rocketchat_standin::front_router`: decode once, split on the decoded `%2F`, resolve `..`,
//! re-escape), and made as permissive as a misconfigured server can be (the endpoint enabled,
//! every user holding `view-room-administration`). The shim in front of it has the endpoint
//! disabled and the related endpoints guarded. A few thousand generated spellings of the
//! guarded paths are sent twice: straight to the stand-in, where many of them reach the
//! endpoints and return other people's messages, and through the shim, where none may.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rocketchat_shim::config::DmHistoryEndpoint;

/// The paths the hostile review reported, verbatim.
const REVIEWED: &[&str] = &[
    "/api/v1/%252e%252e%2f../im.messages.others",
    "/api/v1/;%2f../im.messages.others",
    "/api/v1/%20%2F%2e%2e/dm.messages.others",
    "/api/v1/%252e%252e%2f../im.list.everyone",
    "/api/v1/;%2f../im.counters",
];

/// A small deterministic generator (xorshift64*), so a failure names a reproducible path.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One random spelling of `/api/v1/<name>`: noise that some router removes (dot segments
/// in raw, encoded and doubly encoded forms, `;` parameters, whitespace, encoded separators)
/// before, between and after the segments, and bytes of the name percent-encoded at random.
fn spelling(rng: &mut Rng, name: &str) -> String {
    const NOISE: &[&str] = &[
        "",
        "",
        "",
        "x/../",
        "x%2f..%2f",
        ";%2f../",
        "%20%2F%2e%2e/",
        "%252e%252e%2f../",
        "%2e%2e%2f",
        "..%2f",
        "./",
        "%2e/",
        "%252e/",
        ";x/",
        "%3b/",
        "%20/",
        "%09/",
        "a%2F..%2F",
        "a%5c..%5c",
        "a\\..\\",
        "%2f",
        "%252f",
        "//",
        "q;%2f%2e%2e/",
        "%c0%ae%c0%ae/",
        "%25%32%65%25%32%65%2f",
        ".%2e/",
        "%2e./",
        "x/%2e%2e/",
    ];
    const SEP: &[&str] = &["/", "/", "/", "%2f", "%2F", "//", "/./", "%2f%2e%2f", "\\"];
    let mut out = String::new();
    for (i, seg) in ["api", "v1", name].iter().enumerate() {
        out.push_str(if i == 0 { "/" } else { rng.pick(SEP) });
        out.push_str(rng.pick(NOISE));
        for b in seg.bytes() {
            match rng.next() % 8 {
                0 => out.push_str(&format!("%{b:02x}")),
                1 => out.push_str(&format!("%{b:02X}")),
                _ => out.push(b as char),
            }
        }
    }
    out.push_str(rng.pick(&["", "", "/", "%20", "%2f", ";x", "/.", "/x/..", "%2fx%2f.."]));
    out
}

/// Sends `GET {path}?roomId=...` with Bob's credentials on a fresh connection; returns the
/// status line's code and the whole answer.
async fn get_raw(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!(
        "GET {path}?roomId=alice-idbob-id&count=0 HTTP/1.1\r\nHost: x\r\nX-User-Id: bob-id\r\nX-Auth-Token: bob-token\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
    let code = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer)
}

#[tokio::test]
async fn no_generated_spelling_gets_around_the_shim_behind_a_lenient_router() {
    let p = start(|c| {
        c.policy.dm_history_endpoint = DmHistoryEndpoint::Disabled;
        c.policy.guard_related_endpoints = true;
        c.cache.enabled = false;
    })
    .await;
    p.standin.set_front_router(true);
    p.standin.set_dm_history_enabled(true);
    p.standin
        .set_permission_roles("view-room-administration", &["admin", "user"]);

    let names = [
        "im.messages.others",
        "dm.messages.others",
        "im.list.everyone",
        "dm.list.everyone",
        "im.counters",
        "dm.counters",
    ];
    let mut rng = Rng(0x5eed_0fb7_9a55);
    let mut paths: Vec<String> = REVIEWED.iter().map(|s| s.to_string()).collect();
    for i in 0..3000 {
        paths.push(spelling(&mut rng, names[i % names.len()]));
    }

    // Straight to the lenient stand-in: how many spellings reach a guarded endpoint at all.
    let mut reach = Vec::new();
    for path in &paths {
        let (code, answer) = get_raw(p.standin.addr(), path).await;
        if code == 200 && answer.contains("\"success\":true") {
            reach.push(path.clone());
        }
    }
    for path in REVIEWED {
        assert!(
            reach.iter().any(|r| r == path),
            "{path} should reach the endpoint behind the lenient router"
        );
    }
    assert!(
        reach.len() >= 300,
        "the generator is too tame: only {} of {} spellings reach an endpoint directly",
        reach.len(),
        paths.len()
    );

    // Through the shim: none of them may reach one.
    p.standin.clear_requests();
    let mut outcomes = std::collections::BTreeMap::<u16, usize>::new();
    for path in &reach {
        let (code, answer) = get_raw(p.shim.addr, path).await;
        assert!(
            code != 200 && !answer.contains("\"messages\"") && !answer.contains("\"ims\""),
            "bypass through the shim: {path} -> {answer}"
        );
        assert!(
            answer.contains("application/json"),
            "{path}: refusals are Rocket.Chat-shaped JSON: {answer}"
        );
        *outcomes.entry(code).or_default() += 1;
    }
    let leaked: Vec<_> = p
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.path != "/api/v1/me" && r.path != "/api/v1/permissions.listAll")
        .map(|r| format!("{} (routed as {})", r.target, r.path))
        .collect();
    assert!(
        leaked.is_empty(),
        "requests reached the upstream: {leaked:?}"
    );
    eprintln!(
        "{} of {} generated spellings reach a guarded endpoint behind the lenient router; through the shim: {outcomes:?}",
        reach.len(),
        paths.len()
    );
}

#[tokio::test]
async fn percent_encoded_pass_through_paths_still_work() {
    let p = start(|c| c.policy.guard_related_endpoints = true).await;
    // File names, avatars and user names with escapes and dots: forwarded byte for byte.
    let paths = [
        "/file-upload/6gK2j7QwYb/Screenshot%202024-01-01%20at%2012.00.00.png",
        "/file-upload/abc/r%C3%A9sum%C3%A9%20(final).pdf",
        "/file-upload/abc/a%2Fb%2Fc.txt",
        "/file-upload/abc/100%25.txt",
        "/file-upload/abc/..%2e.txt",
        "/avatar/john%20doe",
        "/avatar/%40alice",
        "/avatar/j.doe",
        "/direct/alice%2Fbob",
        "/api/v1/users.info",
        "/api/v1/channels.messages",
        "/api/v1/im.messages",
        "/api/v1/claim.counters",
        "/api/v1/others",
    ];
    for path in paths {
        let (code, answer) = get_raw(p.shim.addr, path).await;
        assert_ne!(code, 400, "{path} was refused: {answer}");
        let target = format!("{path}?roomId=alice-idbob-id&count=0");
        assert!(
            p.standin.requests().iter().any(|r| r.target == target),
            "{path} did not reach the upstream byte for byte ({code})"
        );
    }
}

#[tokio::test]
async fn ambiguous_paths_get_a_rocket_chat_shaped_400() {
    let p = start(|c| c.policy.guard_related_endpoints = true).await;
    for path in REVIEWED {
        let (code, answer) = get_raw(p.shim.addr, path).await;
        assert_eq!(code, 400, "{path}: {answer}");
        assert_eq!(
            raw_body(&answer),
            r#"{"success":false,"error":"The request path is ambiguous: a router could read it as a protected endpoint; send the canonical path [error-invalid-path]","errorType":"error-invalid-path"}"#,
            "{path}"
        );
    }
    assert_eq!(p.standin.requests().len(), 0, "nothing went upstream");
}
