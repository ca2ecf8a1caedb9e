//! The access rules beyond Rocket.Chat's own (spec/shim.md 9.2 and 9.3) as pure functions:
//! the reason a read must give, and which conversations are protected from whom. The
//! pipeline (`mod.rs`) decides *when* each runs; these decide only *what* the answer is, so
//! the unit tests below cover every case without a server.

use http::HeaderMap;
use regex::Regex;

use crate::audit::Person;
use crate::config::PolicyConfig;
use crate::error::ApiError;

use super::policy::Identity;

/// The request header carrying the reason.
pub const REASON_HEADER: &str = "x-audit-reason";
/// The most characters a reason may have after trimming.
const MAX_REASON_CHARS: usize = 256;

/// 9.2: the reason the request gives, trimmed. `Ok(None)` when none is required and none (or
/// no valid one) was sent: an unrequired reason that is malformed is simply not recorded.
/// Required: exactly one header, valid UTF-8, 1..=256 characters after trimming, no control
/// characters (TAB included), and a match of `pattern` somewhere in it when one is set.
pub fn reason(
    headers: &HeaderMap,
    required: bool,
    pattern: Option<&Regex>,
) -> Result<Option<String>, ApiError> {
    let found = acceptable_reason(headers, pattern);
    match (found, required) {
        (Some(r), _) => Ok(Some(r)),
        (None, false) => Ok(None),
        (None, true) => Err(ApiError::reason_required()),
    }
}

fn acceptable_reason(headers: &HeaderMap, pattern: Option<&Regex>) -> Option<String> {
    let mut all = headers.get_all(REASON_HEADER).iter();
    let value = all.next()?;
    if all.next().is_some() {
        // Two reasons: which one would the record keep? Neither.
        return None;
    }
    let text = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_REASON_CHARS || text.chars().any(char::is_control) {
        return None;
    }
    if pattern.is_some_and(|p| !p.is_match(text)) {
        return None;
    }
    Some(text.to_owned())
}

/// Whether `who` is named in `list` by id or username.
fn named(list: &[String], id: &str, username: &str) -> bool {
    list.iter().any(|n| n == id || n == username)
}

/// Whether the caller is one of `protected_readers`.
pub fn is_reader(policy: &PolicyConfig, caller: &Identity) -> bool {
    named(&policy.protected_readers, &caller.user_id, &caller.username)
}

/// 9.3: whether `room_id` (with these members) is protected: listed in `protected_rooms`,
/// or one of its members is in `protected_users` by id or username.
pub fn is_protected(policy: &PolicyConfig, room_id: &str, members: &[Person]) -> bool {
    policy.protected_rooms.iter().any(|r| r == room_id)
        || members
            .iter()
            .any(|m| named(&policy.protected_users, &m.id, &m.username))
}

/// 9.3 for one read: the 403 unless the room is unprotected or the caller is a reader.
pub fn check_protected(
    policy: &PolicyConfig,
    caller: &Identity,
    room_id: &str,
    members: &[Person],
) -> Result<(), ApiError> {
    if is_protected(policy, room_id, members) && !is_reader(policy, caller) {
        return Err(ApiError::room_protected());
    }
    Ok(())
}

/// 9.3: `im.list.everyone` / `dm.list.everyone` show every DM's last message, so while any
/// protected list is set only readers may call them.
pub fn check_list_everyone(policy: &PolicyConfig, caller: &Identity) -> Result<(), ApiError> {
    if policy.any_protected() && !is_reader(policy, caller) {
        return Err(ApiError::room_protected());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};

    const REASON_400: &str = r#"{"success":false,"error":"A reason is required to read others' direct messages: send it in the X-Audit-Reason header [error-reason-required]","errorType":"error-reason-required"}"#;
    const PROTECTED_403: &str = r#"{"success":false,"error":"This conversation is protected [error-room-protected]","errorType":"error-room-protected"}"#;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                REASON_HEADER,
                HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        h
    }

    fn refused(r: Result<Option<String>, ApiError>) -> (StatusCode, String) {
        let e = r.expect_err("refused");
        (e.status, e.body.to_string())
    }

    #[test]
    fn a_reason_is_trimmed_and_kept() {
        let r = reason(&headers(&[b"  INC-42 checking  "]), true, None);
        assert_eq!(r, Ok(Some("INC-42 checking".into())));
        // Not required: still recorded when given.
        let r = reason(&headers(&[b"why"]), false, None);
        assert_eq!(r, Ok(Some("why".into())));
        assert_eq!(reason(&HeaderMap::new(), false, None), Ok(None));
    }

    #[test]
    fn a_missing_or_bad_reason_is_the_exact_400() {
        let long = "x".repeat(257);
        let exact = "é".repeat(256);
        assert_eq!(
            reason(&headers(&[exact.as_bytes()]), true, None),
            Ok(Some(exact.clone()))
        );
        for h in [
            HeaderMap::new(),
            headers(&[b"   "]),
            headers(&[long.as_bytes()]),
            headers(&[b"a\tb"]),
            headers(&[b"\xff\xfe"]),
            headers(&[b"one", b"two"]),
        ] {
            assert_eq!(
                refused(reason(&h, true, None)),
                (StatusCode::BAD_REQUEST, REASON_400.into()),
                "{h:?}"
            );
        }
    }

    #[test]
    fn the_pattern_is_a_search() {
        let p = Regex::new("(INC|CASE)-[0-9]+").expect("regex");
        assert!(reason(&headers(&[b"see INC-7"]), true, Some(&p)).is_ok());
        let anchored = Regex::new("^(INC|CASE)-[0-9]+").expect("regex");
        assert_eq!(
            refused(reason(&headers(&[b"see INC-7"]), true, Some(&anchored))),
            (StatusCode::BAD_REQUEST, REASON_400.into())
        );
        assert_eq!(
            reason(&headers(&[b"CASE-12: audit"]), true, Some(&anchored)),
            Ok(Some("CASE-12: audit".into()))
        );
    }

    fn person(id: &str, username: &str) -> Person {
        Person {
            id: id.into(),
            username: username.into(),
        }
    }

    fn caller(id: &str, username: &str) -> Identity {
        Identity {
            user_id: id.into(),
            username: username.into(),
            roles: vec!["admin".into()],
        }
    }

    fn policy(users: &[&str], rooms: &[&str], readers: &[&str]) -> PolicyConfig {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyConfig {
            protected_users: v(users),
            protected_rooms: v(rooms),
            protected_readers: v(readers),
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn protected_users_by_id_or_username() {
        let members = [person("ceo-id", "ceo"), person("bob-id", "bob")];
        let admin = caller("adm-id", "admin");
        for p in [policy(&["ceo-id"], &[], &[]), policy(&["ceo"], &[], &[])] {
            let e = check_protected(&p, &admin, "r1", &members).expect_err("protected");
            assert_eq!(e.status, StatusCode::FORBIDDEN);
            assert_eq!(e.body.to_string(), PROTECTED_403);
        }
        let p = policy(&["carol"], &[], &[]);
        assert!(check_protected(&p, &admin, "r1", &members).is_ok());
    }

    #[test]
    fn protected_rooms_by_id() {
        let p = policy(&[], &["r1"], &[]);
        let admin = caller("adm-id", "admin");
        assert!(check_protected(&p, &admin, "r1", &[]).is_err());
        assert!(check_protected(&p, &admin, "r2", &[]).is_ok());
    }

    #[test]
    fn readers_by_id_or_username_may_read() {
        let members = [person("ceo-id", "ceo")];
        for readers in [["wc-id"], ["wc"]] {
            let p = policy(&["ceo"], &["r9"], &readers);
            let reader = caller("wc-id", "wc");
            assert!(check_protected(&p, &reader, "r1", &members).is_ok());
            assert!(check_protected(&p, &reader, "r9", &[]).is_ok());
            assert!(check_list_everyone(&p, &reader).is_ok());
            let other = caller("adm-id", "admin");
            assert!(check_list_everyone(&p, &other).is_err());
        }
        // No protected list: the list endpoints are open (readers alone protect nothing).
        assert!(check_list_everyone(&policy(&[], &[], &["wc"]), &caller("a", "a")).is_ok());
    }
}
