//! What a record says about the answer a client received, computed from the exact body
//! sent (also on a cache hit): the number of messages and the digest of their ids, and the
//! error id of a non-2xx answer. Pure functions of (status, body); no message text is kept.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::chain::to_hex;

/// `messages` and `message_ids_sha256` of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesDigest {
    /// How many messages the answer's `messages` array held.
    pub count: u64,
    /// Hex SHA-256 of their `_id`s joined by `\n`, in answer order (of "" for none).
    pub ids_sha256: String,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    messages: Option<Vec<Message>>,
}

#[derive(Deserialize)]
struct Message {
    /// Only the id is read; every other field (the text above all) is skipped unparsed.
    #[serde(rename = "_id", default)]
    id: Option<String>,
}

/// The count and id digest of a JSON answer's `messages` array; `None` when the body is not
/// a JSON object with such an array (refusals, errors, the related endpoints). A message
/// without a string `_id` counts, with "" as its id.
pub fn messages_digest(body: &[u8]) -> Option<MessagesDigest> {
    let parsed: Body = serde_json::from_slice(body).ok()?;
    let messages = parsed.messages?;
    let mut h = Sha256::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(m.id.as_deref().unwrap_or("").as_bytes());
    }
    Some(MessagesDigest {
        count: messages.len() as u64,
        ids_sha256: to_hex(&h.finalize()),
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "errorType", default)]
    error_type: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A record's `error` (spec/shim.md 9.1): `None` on a 2xx; else the body's `errorType` if it
/// has one, else the bracketed id at the end of its `error` text (`error-unauthorized` from
/// `"... [error-unauthorized]"`), else `not-logged-in` for a 401, `method-not-allowed` for a
/// 405 and `error-unauthorized` for the legacy 403; else `None`.
pub fn error_code(status: u16, body: &[u8]) -> Option<String> {
    if (200..300).contains(&status) {
        return None;
    }
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        if let Some(serde_json::Value::String(t)) = b.error_type {
            if !t.is_empty() {
                return Some(t);
            }
        }
        if let Some(serde_json::Value::String(text)) = b.error {
            if let Some(id) = bracketed_id(&text) {
                return Some(id.to_owned());
            }
        }
    }
    match status {
        401 => Some("not-logged-in".into()),
        405 => Some("method-not-allowed".into()),
        403 => Some("error-unauthorized".into()),
        _ => None,
    }
}

/// `error-x` from `"Some text [error-x]"`.
fn bracketed_id(text: &str) -> Option<&str> {
    let inner = text.trim_end().strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let id = &inner[open + 1..];
    (!id.is_empty() && !id.contains(char::is_whitespace)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_the_ids_in_answer_order() {
        let d = messages_digest(
            br#"{"messages":[{"_id":"a","msg":"secret"},{"_id":"b"}],"count":2,"success":true}"#,
        )
        .expect("an array");
        assert_eq!(d.count, 2);
        // python3 -c 'import hashlib; print(hashlib.sha256(b"a\nb").hexdigest())'
        assert_eq!(
            d.ids_sha256,
            "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78"
        );
        let empty = messages_digest(br#"{"messages":[],"success":true}"#).expect("an array");
        assert_eq!(empty.count, 0);
        assert_eq!(
            empty.ids_sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn no_array_no_digest() {
        assert_eq!(messages_digest(br#"{"success":false,"error":"x"}"#), None);
        assert_eq!(messages_digest(br#"{"messages":null}"#), None);
        assert_eq!(messages_digest(b"not json"), None);
        assert_eq!(messages_digest(br#"[1,2]"#), None);
    }

    #[test]
    fn error_ids() {
        let body = br#"{"success":false,"error":"Not allowed [error-not-allowed]","errorType":"error-not-allowed"}"#;
        assert_eq!(error_code(200, body), None);
        assert_eq!(error_code(403, body).as_deref(), Some("error-not-allowed"));
        assert_eq!(
            error_code(400, br#"{"success":false,"error":"The endpoint is disabled [error-endpoint-disabled]"}"#).as_deref(),
            Some("error-endpoint-disabled")
        );
        assert_eq!(
            error_code(
                401,
                br#"{"status":"error","message":"You must be logged in to do this."}"#
            )
            .as_deref(),
            Some("not-logged-in")
        );
        assert_eq!(error_code(405, b"").as_deref(), Some("method-not-allowed"));
        assert_eq!(
            error_code(403, br#"{"success":false,"error":"unauthorized"}"#).as_deref(),
            Some("error-unauthorized")
        );
        assert_eq!(error_code(502, b"bad gateway"), None);
    }
}
