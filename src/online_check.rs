//! `rocketchat-shim check --online`: after the config validated, ask the configured upstream
//! what it is, and say in one line each whether the config fits it:
//!
//! - `version:` what `/api/info` reports, and whether `policy.error_style` fits it ("modern"
//!   for Rocket.Chat 6 and later, "legacy" before);
//! - `setting:` the upstream's own `API_Enable_Direct_Message_History_EndPoint`, read with the
//!   service account when one is configured and its token variable is set (or why not), and
//!   what `policy.dm_history_endpoint` makes of it;
//! - `address:` the address the upstream answered from: loopback, private, or public (a
//!   warning: a Rocket.Chat clients can reach directly walks around the shim).
//!
//! When the upstream cannot be reached at all, one `upstream: not reached:` line instead, and
//! exit status 1. Exit 0 means the upstream answered `/api/info` (whatever the lines say).
//!
//! The requests go through the shim's own upstream client ([`Upstream`]), so the check sees
//! exactly what the proxy would: the same URL, `path_prefix`, CA file, connect and response
//! timeouts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use hyper_util::client::legacy::connect::HttpInfo;
use serde_json::Value;

use rocketchat_shim::config::{Config, DmHistoryEndpoint, ErrorStyle};
use rocketchat_shim::dm_history::endpoint_setting::SETTING_ID;
use rocketchat_shim::dm_history::lookup::read_body;
use rocketchat_shim::upstream::{request, Upstream};

/// Largest answer read from `/api/info` or the setting (real ones are a few hundred bytes).
const MAX_ANSWER: usize = 1024 * 1024;
/// The longest upstream-supplied text printed as is (a version, a setting value).
const MAX_SHOWN: usize = 64;

/// What the check found: the lines to print, and whether the upstream answered at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One line each, without newlines.
    pub lines: Vec<String>,
    /// The upstream answered `/api/info` with an HTTP response (exit status 0, else 1).
    pub reached: bool,
}

/// Runs the check on a current-thread runtime, prints its lines on stdout and returns the
/// exit status (0 reached, 1 not reached or no runtime).
pub fn main(config: &Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = rt.block_on(run(config));
    for line in &report.lines {
        println!("{line}");
    }
    if report.reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Asks the upstream and builds the report.
pub async fn run(config: &Config) -> Report {
    let url = &config.upstream.url;
    let upstream = match Upstream::new(&config.upstream) {
        Ok(u) => u,
        Err(e) => return not_reached(format!("upstream: not reached: {url}: {e}")),
    };
    let info_path = format!("{}/api/info", upstream.path_prefix);
    let info = match get(&upstream, &info_path, None).await {
        Ok(a) => a,
        Err(e) => return not_reached(format!("upstream: not reached: {url}{info_path}: {e}")),
    };
    Report {
        lines: vec![
            version_line(&info, &info_path, config.policy.error_style),
            setting_line(config, &upstream).await,
            address_line(info.peer),
        ],
        reached: true,
    }
}

fn not_reached(line: String) -> Report {
    Report {
        lines: vec![line],
        reached: false,
    }
}

/// One upstream answer: its status, its JSON body (or why there is none) and the peer address
/// of the connection it came over.
struct Answer {
    status: StatusCode,
    body: Result<Value, String>,
    peer: Option<SocketAddr>,
}

/// GETs `path` (already under `path_prefix`), with the service account's headers when
/// `cred = Some((user_id, token))`. `Err` only when no response head arrived.
async fn get(
    upstream: &Upstream,
    path: &str,
    cred: Option<(&str, &str)>,
) -> Result<Answer, String> {
    let mut head = HeaderMap::new();
    let h = &mut head;
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!(
            "rocketchat-shim/",
            env!("CARGO_PKG_VERSION"),
            " check"
        )),
    );
    if let Some((user_id, token)) = cred {
        let (Ok(u), Ok(t)) = (HeaderValue::from_str(user_id), HeaderValue::from_str(token)) else {
            return Err(
                "the service account's user_id or token is not a valid header value".into(),
            );
        };
        h.insert(HeaderName::from_static("x-user-id"), u);
        let mut t = t;
        t.set_sensitive(true);
        h.insert(HeaderName::from_static("x-auth-token"), t);
    }
    let req = request::unattended(upstream, path, head).map_err(|e| e.to_string())?;
    let resp = upstream.send(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let peer = resp
        .extensions()
        .get::<HttpInfo>()
        .map(HttpInfo::remote_addr);
    let body = read_body(resp.into_body(), MAX_ANSWER)
        .await
        .and_then(|b: Bytes| {
            serde_json::from_slice(&b).map_err(|_| "the answer is not JSON".to_string())
        });
    Ok(Answer { status, body, peer })
}

/// The first number of a version such as `6.13.0`, `6.13` or `7.0.0-rc.1`.
fn major(version: &str) -> Option<u64> {
    let first = version.trim().split('.').next()?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    first.parse().ok()
}

/// The version an `/api/info` body reports: `version` (anonymous callers) or `info.version`
/// (an admin's full answer).
fn reported_version(body: &Value) -> Option<&Value> {
    body.get("version")
        .or_else(|| body.get("info").and_then(|i| i.get("version")))
}

/// Upstream-supplied text as printed: short printable ASCII as is, anything else quoted,
/// escaped and cut (a hostile upstream must not write to the operator's terminal).
fn shown(s: &str) -> String {
    if !s.is_empty() && s.len() <= MAX_SHOWN && s.bytes().all(|b| b.is_ascii_graphic()) {
        return s.to_owned();
    }
    quoted(s)
}

/// `s` in quotes with escapes, at most [`MAX_SHOWN`] characters of it.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(MAX_SHOWN).collect();
    let more = if cut.len() < s.len() { "..." } else { "" };
    format!("\"{}\"{more}", cut.escape_default())
}

fn style_name(style: ErrorStyle) -> &'static str {
    match style {
        ErrorStyle::Modern => "modern",
        ErrorStyle::Legacy => "legacy",
    }
}

fn version_line(info: &Answer, info_path: &str, style: ErrorStyle) -> String {
    let style_s = style_name(style);
    let version = match (&info.body, info.status) {
        (_, s) if s == StatusCode::NOT_FOUND => Err(format!(
            "the upstream answered {s} to {info_path}: is upstream.path_prefix right?"
        )),
        (_, s) if s != StatusCode::OK => Err(format!("the upstream answered {s} to {info_path}")),
        (Err(why), _) => Err(why.clone()),
        (Ok(body), _) => match reported_version(body) {
            Some(Value::String(v)) => match major(v) {
                Some(m) => Ok((v.as_str(), m)),
                None => Err(format!("{} is not a version", quoted(v))),
            },
            _ => Err("the answer names no version".into()),
        },
    };
    match version {
        Err(why) => format!(
            "version: unknown ({why}); cannot tell whether policy.error_style = \"{style_s}\" fits"
        ),
        Ok((v, m)) => {
            let v = shown(v);
            match (style, m >= 6) {
                (ErrorStyle::Modern, true) => format!(
                    "version: {v}; policy.error_style = \"modern\" fits it (Rocket.Chat 6 and later)"
                ),
                (ErrorStyle::Legacy, false) => format!(
                    "version: {v}; policy.error_style = \"legacy\" fits it (Rocket.Chat before 6)"
                ),
                (ErrorStyle::Modern, false) => format!(
                    "version: {v}; policy.error_style = \"modern\" does not fit it: Rocket.Chat before 6 needs \"legacy\""
                ),
                (ErrorStyle::Legacy, true) => format!(
                    "version: {v}; policy.error_style = \"legacy\" does not fit it: Rocket.Chat 6 and later needs \"modern\""
                ),
            }
        }
    }
}

fn policy_name(p: DmHistoryEndpoint) -> &'static str {
    match p {
        DmHistoryEndpoint::Enabled => "enabled",
        DmHistoryEndpoint::Disabled => "disabled",
        DmHistoryEndpoint::Upstream => "upstream",
    }
}

async fn setting_line(config: &Config, upstream: &Upstream) -> String {
    let policy = config.policy.dm_history_endpoint;
    let p = policy_name(policy);
    // What the policy does when the setting cannot be read: decide alone, or fail closed.
    let unread = |why: String, upstream_consequence: &str| {
        let then = match policy {
            DmHistoryEndpoint::Upstream => {
                format!("policy.dm_history_endpoint = \"upstream\" {upstream_consequence}")
            }
            _ => format!("policy.dm_history_endpoint = \"{p}\" decides alone"),
        };
        format!("setting: not read: {why}; {then}")
    };
    let Some(sa) = &config.upstream.service_account else {
        return unread(
            "no [upstream.service_account] is configured".into(),
            "cannot start without it",
        );
    };
    if sa.user_id.trim().is_empty() {
        return unread(
            "upstream.service_account.user_id is empty".into(),
            "cannot start without it",
        );
    }
    let Some((user_id, token)) = config.service_token() else {
        return unread(
            format!(
                "the environment variable {} (upstream.service_account.token_env) is not set",
                sa.token_env
            ),
            "cannot start without it",
        );
    };
    const FAILS_CLOSED: &str = "answers 502 on the endpoint until it can";
    let path = format!("{}/api/v1/settings/{SETTING_ID}", upstream.path_prefix);
    let answer = match get(upstream, &path, Some((&user_id, &token))).await {
        Ok(a) => a,
        Err(e) => return unread(e, FAILS_CLOSED),
    };
    match answer.status {
        StatusCode::OK => {}
        s @ StatusCode::UNAUTHORIZED => {
            return unread(
                format!("the upstream answered {s} to \"{user_id}\" (wrong user_id or token)"),
                FAILS_CLOSED,
            )
        }
        s @ StatusCode::FORBIDDEN => {
            return unread(
                format!(
                    "the upstream answered {s} to \"{user_id}\" (the account lacks view-privileged-setting)"
                ),
                FAILS_CLOSED,
            )
        }
        s => {
            return unread(
                format!("the upstream answered {s} to \"{user_id}\""),
                FAILS_CLOSED,
            )
        }
    }
    let value = match &answer.body {
        Ok(body) => match body.get("value") {
            Some(v) => v.clone(),
            None => return unread("the answer names no value".into(), FAILS_CLOSED),
        },
        Err(why) => return unread(why.clone(), FAILS_CLOSED),
    };
    // Rocket.Chat enables the endpoint only for the boolean true (so does the shim).
    let meaning = match value {
        Value::Bool(true) => "enabled",
        Value::Bool(false) => "disabled",
        _ => "disabled: only the boolean true enables it",
    };
    let json = value.to_string();
    let value_s =
        if json.len() <= MAX_SHOWN && json.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            json
        } else {
            quoted(&json)
        };
    let then = match policy {
        DmHistoryEndpoint::Upstream => {
            "policy.dm_history_endpoint = \"upstream\" follows it".into()
        }
        _ => format!("policy.dm_history_endpoint = \"{p}\" overrides it"),
    };
    format!(
        "setting: {SETTING_ID} is {value_s} upstream ({meaning}), read as \"{user_id}\"; {then}"
    )
}

/// Where an address is reachable from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// This host only.
    Loopback,
    /// A private, shared (CGNAT) or link-local network: not routed on the internet.
    Private,
    /// Anything else.
    Public,
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    let o = ip.octets();
    if ip.is_loopback() || ip.is_unspecified() {
        // 0.0.0.0 as a destination is this host on Linux.
        Reach::Loopback
    } else if ip.is_private()
        || ip.is_link_local()
        // 100.64.0.0/10, RFC 6598 shared address space (carrier NAT, some cluster networks).
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
    {
        Reach::Private
    } else {
        Reach::Public
    }
}

fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => reach_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() || v6.is_unspecified() {
                Reach::Loopback
            } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                // fc00::/7 unique local, fe80::/10 link-local.
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

fn address_line(peer: Option<SocketAddr>) -> String {
    let Some(peer) = peer else {
        return "address: unknown (the connection did not report its peer)".into();
    };
    match reach(peer.ip()) {
        Reach::Loopback => format!("address: {peer} is loopback"),
        Reach::Private => format!("address: {peer} is private"),
        Reach::Public => format!(
            "address: {peer} is public: warning: whoever reaches this address walks around the shim; bind Rocket.Chat to loopback (BIND_IP=127.0.0.1) or a private network"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn majors_of_the_versions_rocket_chat_reports() {
        assert_eq!(major("6.13.0"), Some(6));
        assert_eq!(major("6.13"), Some(6));
        assert_eq!(major("7.0.0-rc.1"), Some(7));
        assert_eq!(major("5"), Some(5));
        assert_eq!(major(""), None);
        assert_eq!(major("v6.1"), None);
        assert_eq!(major("-1.0"), None);
    }

    #[test]
    fn version_from_anonymous_and_admin_answers() {
        assert_eq!(
            reported_version(&json!({"version": "6.13", "success": true})),
            Some(&json!("6.13"))
        );
        assert_eq!(
            reported_version(&json!({"info": {"version": "6.13.0"}, "success": true})),
            Some(&json!("6.13.0"))
        );
        assert_eq!(reported_version(&json!({"success": true})), None);
    }

    #[test]
    fn addresses_by_reach() {
        let r = |s: &str| reach(s.parse().expect("ip"));
        assert_eq!(r("127.0.0.1"), Reach::Loopback);
        assert_eq!(r("127.3.2.1"), Reach::Loopback);
        assert_eq!(r("::1"), Reach::Loopback);
        assert_eq!(r("::ffff:127.0.0.1"), Reach::Loopback);
        assert_eq!(r("10.1.2.3"), Reach::Private);
        assert_eq!(r("172.16.0.1"), Reach::Private);
        assert_eq!(r("172.32.0.1"), Reach::Public);
        assert_eq!(r("192.168.1.1"), Reach::Private);
        assert_eq!(r("169.254.1.1"), Reach::Private);
        assert_eq!(r("100.64.0.1"), Reach::Private);
        assert_eq!(r("100.128.0.1"), Reach::Public);
        assert_eq!(r("fd00::1"), Reach::Private);
        assert_eq!(r("fe80::1"), Reach::Private);
        assert_eq!(r("::ffff:10.0.0.1"), Reach::Private);
        assert_eq!(r("203.0.113.7"), Reach::Public);
        assert_eq!(r("2001:db8::1"), Reach::Public);
        assert!(address_line(Some("203.0.113.7:443".parse().expect("addr")))
            .starts_with("address: 203.0.113.7:443 is public: warning: "));
    }

    fn answer(status: u16, body: Result<Value, String>) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("status"),
            body,
            peer: None,
        }
    }

    #[test]
    fn version_lines_for_odd_answers() {
        let line = |a: &Answer| version_line(a, "/chat/api/info", ErrorStyle::Modern);
        assert_eq!(
            line(&answer(404, Err("the answer is not JSON".into()))),
            "version: unknown (the upstream answered 404 Not Found to /chat/api/info: is upstream.path_prefix right?); cannot tell whether policy.error_style = \"modern\" fits"
        );
        assert_eq!(
            line(&answer(503, Ok(json!({})))),
            "version: unknown (the upstream answered 503 Service Unavailable to /chat/api/info); cannot tell whether policy.error_style = \"modern\" fits"
        );
        assert_eq!(
            line(&answer(200, Err("the answer is not JSON".into()))),
            "version: unknown (the answer is not JSON); cannot tell whether policy.error_style = \"modern\" fits"
        );
        assert_eq!(
            line(&answer(200, Ok(json!({"success": true})))),
            "version: unknown (the answer names no version); cannot tell whether policy.error_style = \"modern\" fits"
        );
        assert_eq!(
            line(&answer(200, Ok(json!({"info": {"version": "5.4.10"}})))),
            "version: 5.4.10; policy.error_style = \"modern\" does not fit it: Rocket.Chat before 6 needs \"legacy\""
        );
        assert_eq!(
            line(&answer(200, Ok(json!({"version": "6.0.0\u{202e}x"})))),
            "version: \"6.0.0\\u{202e}x\"; policy.error_style = \"modern\" fits it (Rocket.Chat 6 and later)"
        );
        assert_eq!(
            address_line(None),
            "address: unknown (the connection did not report its peer)"
        );
    }

    #[test]
    fn upstream_text_cannot_write_escapes() {
        assert_eq!(shown("6.13.0"), "6.13.0");
        assert_eq!(shown(""), "\"\"");
        assert_eq!(shown("6\u{1b}[2J"), "\"6\\u{1b}[2J\"");
        assert!(shown(&"9".repeat(200)).ends_with("\"..."));
    }
}
