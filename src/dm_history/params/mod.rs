//! The endpoint's query parameters: parsed by the shim itself, validated, and rebuilt in one
//! canonical spelling (`spec/shim.md` §4).
//!
//! Two phases, because the `access_token` credential is needed for identity before the policy
//! runs, while the parameter checks come after it:
//!
//! 1. [`RawQuery::parse`] splits the query string into decoded `(key, value)` pairs and refuses
//!    what cannot be decoded, plus oversized query strings.
//! 2. [`CanonicalQuery::from_raw`] validates against `[policy.params]` and keeps only what goes
//!    upstream; [`CanonicalQuery::to_query_string`] spells it canonically, so one logical query
//!    has one spelling upstream and one cache key.
//!
//! Rocket.Chat parses query strings with `qs`, which turns `roomId[$ne]=x` into an object and a
//! repeated key into an array, both of which reach MongoDB (`spec/rocketchat-reference.md`
//! §3.6). Every parameter the shim forwards must therefore be exactly one plain value: a
//! repeated or bracketed key is refused, naming the parameter. Nothing else is forwarded.
//!
//! Files: `raw.rs` (decoding the query string, one plain value per parameter), this file (the
//! canonical query: `roomId`, `offset`, `count`, `sort`, and the spelling that goes upstream),
//! `filter.rs` (the JSON `fields` and `query` validators).

mod filter;
mod raw;

use std::fmt::Write as _;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::config::{ParamsConfig, QueryAndFields};
use crate::error::ApiError;
use filter::{fields, parse_object, query};
use raw::shorten;
pub use raw::{Pair, RawQuery};

/// Longest query string accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Most `key=value` pairs accepted in one query string.
pub const MAX_PAIRS: usize = 64;
/// Longest `roomId`, in characters.
pub const MAX_ROOM_ID_CHARS: usize = 128;
/// Largest `offset` accepted.
pub const MAX_OFFSET: u64 = 1_000_000_000;
/// Most keys in a `fields` object, and in a `query` object counting nested keys.
pub const MAX_JSON_KEYS: usize = 32;
/// Deepest object nesting in a `query` (the top-level object is depth 1).
pub const MAX_QUERY_DEPTH: usize = 4;
/// Longest `$regex` pattern, in characters.
pub const MAX_REGEX_CHARS: usize = 256;

/// Everything but RFC 3986 unreserved characters is percent-encoded in the canonical query.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The validated, canonical request that goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalQuery {
    /// Exactly the value given (after percent-decoding), known to be valid.
    pub room_id: String,
    /// Messages to skip.
    pub offset: u64,
    /// Messages to return; `0` (unlimited) only when `allow_unlimited_count` is on.
    pub count: u64,
    /// Compact JSON, keys in the client's order (the order of sort keys is their priority).
    pub sort: Option<String>,
    /// Compact JSON, keys sorted recursively; only in `sanitize` mode.
    pub query: Option<String>,
    /// Compact JSON, keys sorted; only in `sanitize` mode.
    pub fields: Option<String>,
    /// The caller's `access_token`, forwarded with the request when given.
    pub access_token: Option<String>,
}

impl CanonicalQuery {
    /// Validates `raw` per `spec/shim.md` §4, in this order: `roomId` (so a missing one is
    /// Rocket.Chat's own `error-roomid-param-not-provided`), `offset`, `count`, `sort`,
    /// `fields`, `query`, then `access_token`. Other keys are dropped.
    ///
    /// An empty `sort`, `query` or `fields` value, or an empty JSON object, counts as absent
    /// (Rocket.Chat ignores empty values; an empty `sort` object would otherwise replace its
    /// default `{"ts":-1}` with natural order, which is not what a client sending `{}` means).
    pub fn from_raw(raw: &RawQuery, cfg: &ParamsConfig) -> Result<CanonicalQuery, ApiError> {
        let room_id = room_id(raw)?;
        let offset = offset(raw)?;
        let count = count(raw, cfg)?;
        let sort = match raw.single("sort")? {
            Some(v) if !v.is_empty() => sort(v, cfg)?,
            _ => None,
        };
        let (fields, query) = match cfg.query_and_fields {
            QueryAndFields::Strip => (None, None),
            QueryAndFields::Reject => {
                for name in ["fields", "query"] {
                    if raw.mentions(name) {
                        return Err(ApiError::invalid_param(
                            name,
                            "is not accepted by this server",
                        ));
                    }
                }
                (None, None)
            }
            QueryAndFields::Sanitize => {
                let fields = match raw.single("fields")? {
                    Some(v) if !v.is_empty() => fields(v)?,
                    _ => None,
                };
                let query = match raw.single("query")? {
                    Some(v) if !v.is_empty() => query(v)?,
                    _ => None,
                };
                (fields, query)
            }
        };
        let access_token = raw.access_token()?.map(str::to_owned);
        Ok(CanonicalQuery {
            room_id,
            offset,
            count,
            sort,
            query,
            fields,
            access_token,
        })
    }

    /// The canonical query string forwarded upstream: `roomId`, `offset`, `count`, then
    /// `sort`, `query`, `fields` when kept, then `access_token` when present; values
    /// percent-encoded except RFC 3986 unreserved characters.
    pub fn to_query_string(&self) -> String {
        self.build(true)
    }

    /// The same without `access_token`: the credential-free part of the cache key.
    pub fn cache_key(&self) -> String {
        self.build(false)
    }

    /// Appends [`cache_key`](Self::cache_key) to `out` (a cache lookup spells its key in a
    /// buffer it keeps, without allocating).
    pub fn write_cache_key(&self, out: &mut String) {
        self.write(out, false);
    }

    fn build(&self, with_token: bool) -> String {
        let mut out = String::with_capacity(64 + self.room_id.len());
        self.write(&mut out, with_token);
        out
    }

    /// `roomId` first, then every other pair after a `&`.
    fn write(&self, out: &mut String, with_token: bool) {
        push_value(out, "roomId", &self.room_id);
        // Digits need no escaping: written as they are, with no string of their own.
        let _ = write!(out, "&offset={}&count={}", self.offset, self.count);
        let optional = [
            ("sort", &self.sort),
            ("query", &self.query),
            ("fields", &self.fields),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                out.push('&');
                push_value(out, name, v);
            }
        }
        if with_token {
            if let Some(t) = &self.access_token {
                out.push('&');
                push_value(out, "access_token", t);
            }
        }
    }
}

/// Percent-encodes a query component the canonical way (everything but unreserved characters).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// Appends `name=value`, the value percent-encoded.
fn push_value(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push('=');
    out.extend(utf8_percent_encode(value, ENCODE));
}

/// `roomId`: one plain value, non-blank, at most 128 characters, no control characters.
fn room_id(raw: &RawQuery) -> Result<String, ApiError> {
    let value = match raw.single("roomId")? {
        Some(v) if !v.trim().is_empty() => v,
        _ => return Err(ApiError::room_id_missing()),
    };
    if value.chars().count() > MAX_ROOM_ID_CHARS {
        return Err(ApiError::invalid_param(
            "roomId",
            &format!("must be at most {MAX_ROOM_ID_CHARS} characters long"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid_param(
            "roomId",
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// `offset`: absent is 0; otherwise digits only, at most [`MAX_OFFSET`].
fn offset(raw: &RawQuery) -> Result<u64, ApiError> {
    let Some(value) = raw.single("offset")? else {
        return Ok(0);
    };
    match parse_digits(value) {
        Digits::Invalid => Err(ApiError::invalid_param(
            "offset",
            "must be a non-negative integer written with digits only, such as 0 or 50",
        )),
        Digits::Value(n) if n <= MAX_OFFSET => Ok(n),
        _ => Err(ApiError::invalid_param(
            "offset",
            &format!("is too large (at most {MAX_OFFSET})"),
        )),
    }
}

/// `count`: absent is `default_count`; digits only; larger values (even beyond `u64`) are
/// clamped to `max_count`; `0` (unlimited upstream) becomes `max_count` unless
/// `allow_unlimited_count`. A negative count is refused: it would slip past Rocket.Chat's cap.
fn count(raw: &RawQuery, cfg: &ParamsConfig) -> Result<u64, ApiError> {
    let Some(value) = raw.single("count")? else {
        return Ok(cfg.default_count);
    };
    match parse_digits(value) {
        Digits::Invalid => Err(ApiError::invalid_param(
            "count",
            "must be a non-negative integer written with digits only, such as 50",
        )),
        Digits::Value(0) if cfg.allow_unlimited_count => Ok(0),
        Digits::Value(0) | Digits::TooLarge => Ok(cfg.max_count),
        Digits::Value(n) => Ok(n.min(cfg.max_count)),
    }
}

/// A digit string read as an integer.
enum Digits {
    /// Empty, or something other than ASCII digits (a sign, a dot, an exponent, spaces).
    Invalid,
    /// Digits whose value does not fit in `u64`.
    TooLarge,
    Value(u64),
}

fn parse_digits(s: &str) -> Digits {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Digits::Invalid;
    }
    s.parse().map_or(Digits::TooLarge, Digits::Value)
}

/// `sort`: a JSON object whose keys are in `sort_fields` and whose values are the integers 1
/// or -1. Re-serialised compactly in the client's key order, which is the sort priority.
fn sort(value: &str, cfg: &ParamsConfig) -> Result<Option<String>, ApiError> {
    let bad = |why: &str| {
        ApiError::parse_json_query(
            "error-invalid-sort",
            &format!("Invalid sort parameter provided: {why}"),
        )
    };
    let map = parse_object(value).map_err(|why| bad(&why))?;
    if map.is_empty() {
        return Ok(None);
    }
    for (key, v) in &map {
        if !cfg.sort_fields.iter().any(|f| f == key) {
            return Err(bad(&format!(
                "cannot sort on \"{}\" (allowed: {})",
                shorten(key),
                cfg.sort_fields.join(", ")
            )));
        }
        if !matches!(v.as_i64(), Some(1 | -1)) || v.is_f64() {
            return Err(bad(&format!("the value for \"{key}\" must be 1 or -1")));
        }
    }
    Ok(Some(Value::Object(map).to_string()))
}

#[cfg(test)]
mod tests;
