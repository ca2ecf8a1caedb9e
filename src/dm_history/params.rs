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

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use crate::config::{is_field_path, ParamsConfig, QueryAndFields};
use crate::dm_history::errors::ApiError;

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

/// The parameters the endpoint knows; a bracketed spelling of any of them is refused.
const KNOWN: [&str; 7] = [
    "roomId",
    "offset",
    "count",
    "sort",
    "query",
    "fields",
    "access_token",
];

/// Keys that could reach a JavaScript prototype on the upstream, refused in `query`/`fields`
/// (Rocket.Chat's own `clean()` deletes them too).
const PROTOTYPE_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// Everything but RFC 3986 unreserved characters is percent-encoded in the canonical query.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The query string split into decoded `(key, value)` pairs, in order.
///
/// Keys and values are percent-decoded and `+` is a space, as `qs` does; empty pieces
/// (`a=1&&b=2`) are skipped and a piece without `=` has an empty value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawQuery {
    pairs: Vec<(String, String)>,
}

impl RawQuery {
    /// Parses the raw query string (without the `?`).
    ///
    /// Refused with a 400 `error-invalid-params`: more than [`MAX_QUERY_BYTES`] bytes or
    /// [`MAX_PAIRS`] pairs, a `%` not followed by two hex digits, or bytes that are not UTF-8
    /// once decoded. The error names the parameter when its name could be decoded.
    pub fn parse(raw: Option<&str>) -> Result<RawQuery, ApiError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_BYTES {
            return Err(ApiError::invalid_params(&format!(
                "The query string is longer than {MAX_QUERY_BYTES} bytes"
            )));
        }
        let mut pairs = Vec::new();
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PAIRS {
                return Err(ApiError::invalid_params(&format!(
                    "The query string has more than {MAX_PAIRS} parameters"
                )));
            }
            let (raw_key, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let key = decode_component(raw_key).map_err(|why| {
                ApiError::invalid_params(&format!(
                    "A parameter name in the query string {}",
                    why.describe()
                ))
            })?;
            let value = decode_component(raw_value).map_err(|why| {
                ApiError::invalid_param(&shorten(&key), &format!("{} in its value", why.describe()))
            })?;
            pairs.push((key, value));
        }
        Ok(RawQuery { pairs })
    }

    /// The decoded pairs, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The `access_token` credential if exactly one was given. A repeated or bracketed
    /// `access_token` is a 400; an empty one counts as absent.
    pub fn access_token(&self) -> Result<Option<&str>, ApiError> {
        Ok(self.single("access_token")?.filter(|t| !t.is_empty()))
    }

    /// The one plain value of `name`, if given: a repeat, or a key that spells `name` with
    /// brackets (`name[]`, `name[$ne]`, `[name]`), is refused naming the parameter.
    fn single(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for (key, value) in &self.pairs {
            if key == name {
                if found.is_some() {
                    return Err(ApiError::invalid_param(name, "must be given only once"));
                }
                found = Some(value.as_str());
            } else if bracket_base(key) == Some(name) {
                return Err(ApiError::invalid_param(
                    name,
                    "must be one plain value; a key with brackets (an array or object) is not accepted",
                ));
            }
        }
        Ok(found)
    }

    /// Whether `name` appears at all, plainly or with brackets.
    fn mentions(&self, name: &str) -> bool {
        self.pairs
            .iter()
            .any(|(key, _)| key == name || bracket_base(key) == Some(name))
    }
}

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

    fn build(&self, with_token: bool) -> String {
        let mut out = String::with_capacity(64 + self.room_id.len());
        push_pair(&mut out, "roomId", &self.room_id);
        push_pair(&mut out, "offset", &self.offset.to_string());
        push_pair(&mut out, "count", &self.count.to_string());
        let optional = [
            ("sort", &self.sort),
            ("query", &self.query),
            ("fields", &self.fields),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                push_pair(&mut out, name, v);
            }
        }
        if with_token {
            if let Some(t) = &self.access_token {
                push_pair(&mut out, "access_token", t);
            }
        }
        out
    }
}

/// Percent-encodes a query component the canonical way (everything but unreserved characters).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// Appends `&name=value` (without the `&` at the start), the value percent-encoded.
fn push_pair(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push('&');
    }
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

/// `fields`: a JSON object of at most [`MAX_JSON_KEYS`] field paths whose values are all the
/// integer 1 (include) or all 0 (exclude). Re-serialised compactly with keys sorted.
fn fields(value: &str) -> Result<Option<String>, ApiError> {
    let bad = |why: &str| {
        ApiError::parse_json_query(
            "error-invalid-fields",
            &format!("Invalid fields parameter provided: {why}"),
        )
    };
    let map = parse_object(value).map_err(|why| bad(&why))?;
    if map.is_empty() {
        return Ok(None);
    }
    if map.len() > MAX_JSON_KEYS {
        return Err(bad(&format!("more than {MAX_JSON_KEYS} fields")));
    }
    let mut first = None;
    for (key, v) in &map {
        check_field_path(key).map_err(|why| bad(&why))?;
        let flag = match v.as_u64() {
            Some(n @ (0 | 1)) if !v.is_f64() => n,
            _ => return Err(bad(&format!("the value for \"{key}\" must be 1 or 0"))),
        };
        if *first.get_or_insert(flag) != flag {
            return Err(bad("the values must be all 1 (include) or all 0 (exclude)"));
        }
    }
    Ok(Some(sorted(&Value::Object(map)).to_string()))
}

/// `query`: a JSON filter restricted to field equality, `$regex` matches and `$and`/`$or`
/// (see [`check_filter`]). Re-serialised compactly with keys sorted at every level.
fn query(value: &str) -> Result<Option<String>, ApiError> {
    let bad = |why: &str| {
        ApiError::parse_json_query(
            "error-invalid-query",
            &format!("Invalid query parameter provided: {why}"),
        )
    };
    let map = parse_object(value).map_err(|why| bad(&why))?;
    if map.is_empty() {
        return Ok(None);
    }
    let mut keys = 0;
    check_filter(&map, 1, &mut keys).map_err(|why| bad(&why))?;
    Ok(Some(sorted(&Value::Object(map)).to_string()))
}

/// Checks one filter object at nesting `depth`, counting its keys into `keys`.
///
/// Keys are field paths, or `$and`/`$or` holding a non-empty array of filter objects; a `rid`
/// key is refused anywhere (the room comes from `roomId`). Values: see [`check_value`].
fn check_filter(map: &Map<String, Value>, depth: usize, keys: &mut usize) -> Result<(), String> {
    if depth > MAX_QUERY_DEPTH {
        return Err(format!("nested deeper than {MAX_QUERY_DEPTH} levels"));
    }
    for (key, value) in map {
        count_key(keys)?;
        if key == "$and" || key == "$or" {
            let items = match value.as_array() {
                Some(items) if !items.is_empty() => items,
                _ => {
                    return Err(format!(
                        "operator \"{key}\" needs a non-empty array of objects"
                    ))
                }
            };
            for item in items {
                let Some(inner) = item.as_object() else {
                    return Err(format!(
                        "operator \"{key}\" needs a non-empty array of objects"
                    ));
                };
                check_filter(inner, depth + 1, keys)?;
            }
        } else if key.starts_with('$') {
            return Err(format!("operator \"{}\" is not allowed", shorten(key)));
        } else if key.split('.').next() == Some("rid") {
            return Err(format!(
                "the key \"{key}\" is not allowed; the room is given by roomId"
            ));
        } else {
            check_field_path(key)?;
            check_value(key, value, depth, keys)?;
        }
    }
    Ok(())
}

/// A field's value in a `query`: a string, number, boolean or null, or an object holding only
/// `$regex` (a string of at most [`MAX_REGEX_CHARS`] characters) and optionally `$options`
/// (letters from `imsx`).
fn check_value(key: &str, value: &Value, depth: usize, keys: &mut usize) -> Result<(), String> {
    let shape = || {
        format!(
            "the value for \"{key}\" must be a string, number, boolean, null or {{\"$regex\": ...}}"
        )
    };
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
        Value::Number(_) => check_number(value),
        Value::Array(_) => Err(shape()),
        Value::Object(inner) => {
            if depth + 1 > MAX_QUERY_DEPTH {
                return Err(format!("nested deeper than {MAX_QUERY_DEPTH} levels"));
            }
            for (op, v) in inner {
                count_key(keys)?;
                match (op.as_str(), v) {
                    ("$regex", Value::String(p)) if p.chars().count() <= MAX_REGEX_CHARS => {}
                    ("$regex", Value::String(_)) => {
                        return Err(format!(
                        "the \"$regex\" for \"{key}\" is longer than {MAX_REGEX_CHARS} characters"
                    ))
                    }
                    ("$regex", _) => {
                        return Err(format!("the \"$regex\" for \"{key}\" must be a string"))
                    }
                    ("$options", Value::String(o)) if o.chars().all(|c| "imsx".contains(c)) => {}
                    ("$options", _) => {
                        return Err(format!(
                            "the \"$options\" for \"{key}\" may only hold the letters i, m, s and x"
                        ))
                    }
                    (op, _) if op.starts_with('$') => {
                        return Err(format!("operator \"{}\" is not allowed", shorten(op)))
                    }
                    _ => return Err(shape()),
                }
            }
            if inner.contains_key("$regex") {
                Ok(())
            } else {
                Err(shape())
            }
        }
    }
}

/// Counts one more key against [`MAX_JSON_KEYS`].
fn count_key(keys: &mut usize) -> Result<(), String> {
    *keys += 1;
    if *keys > MAX_JSON_KEYS {
        return Err(format!("more than {MAX_JSON_KEYS} keys in all"));
    }
    Ok(())
}

/// A number is kept only if its compact spelling reads back as the same number, so the
/// canonical query is a fixed point (serde_json's default float parsing is not always exact).
fn check_number(value: &Value) -> Result<(), String> {
    let text = value.to_string();
    match serde_json::from_str::<Value>(&text) {
        Ok(back) if back == *value => Ok(()),
        _ => Err(format!(
            "the number {text} cannot be forwarded exactly; use at most 15 significant digits"
        )),
    }
}

/// A field path (letters, digits, `_`, `.`; no empty segment) that names no prototype key.
fn check_field_path(key: &str) -> Result<(), String> {
    if !is_field_path(key) {
        return Err(format!(
            "\"{}\" is not a field path (letters, digits, '_' and '.')",
            shorten(key)
        ));
    }
    if key.split('.').any(|seg| PROTOTYPE_KEYS.contains(&seg)) {
        return Err(format!("the field \"{key}\" is not allowed"));
    }
    Ok(())
}

/// Parses a JSON object, or says why not.
fn parse_object(value: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("must be a JSON object".to_owned()),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

/// A copy of `v` with the keys of every object sorted (serde_json keeps insertion order here,
/// as `preserve_order` is on, so the order has to be made explicitly).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// For a key with brackets, the parameter it spells for `qs`: the first non-empty part
/// between brackets (`roomId[$ne]` and `[roomId]` are both `roomId`), if it is a known one.
fn bracket_base(key: &str) -> Option<&'static str> {
    if !key.contains(['[', ']']) {
        return None;
    }
    let base = key.split(['[', ']']).find(|part| !part.is_empty())?;
    KNOWN.iter().copied().find(|k| *k == base)
}

/// Why a query component could not be decoded.
#[derive(Debug, Clone, Copy)]
enum DecodeError {
    BadEscape,
    NotUtf8,
}

impl DecodeError {
    fn describe(self) -> &'static str {
        match self {
            DecodeError::BadEscape => {
                "has an invalid percent-escape ('%' must be followed by two hex digits)"
            }
            DecodeError::NotUtf8 => "is not valid UTF-8 once percent-decoded",
        }
    }
}

/// Decodes one key or value: `+` is a space, `%XX` a byte; the bytes must be UTF-8.
fn decode_component(s: &str) -> Result<String, DecodeError> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h << 4) | l),
                    _ => return Err(DecodeError::BadEscape),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

/// The value of one hexadecimal digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A caller-supplied name cut to 64 characters for an error message.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use proptest::prelude::*;

    fn cfg() -> ParamsConfig {
        ParamsConfig::default()
    }

    fn canon_with(q: &str, cfg: &ParamsConfig) -> Result<CanonicalQuery, ApiError> {
        CanonicalQuery::from_raw(&RawQuery::parse(Some(q))?, cfg)
    }

    fn canon(q: &str) -> CanonicalQuery {
        match canon_with(q, &cfg()) {
            Ok(c) => c,
            Err(e) => panic!("{q:?} was refused: {}", e.body),
        }
    }

    fn refused_with(q: &str, cfg: &ParamsConfig) -> ApiError {
        match canon_with(q, cfg) {
            Ok(c) => panic!("{q:?} was accepted as {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts a 400 with `errorType` `ty` whose message mentions `needle`.
    fn assert_400(e: &ApiError, ty: &str, needle: &str) {
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.body);
        assert_eq!(e.body["success"], false, "{}", e.body);
        assert_eq!(e.body["errorType"], ty, "{}", e.body);
        let msg = e.body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        assert!(msg.ends_with(&format!("[{ty}]")), "{msg:?}");
    }

    /// Asserts the `invalid_param` 400 naming `param`.
    fn assert_param(q: &str, param: &str) {
        assert_param_with(q, param, &cfg());
    }

    fn assert_param_with(q: &str, param: &str, cfg: &ParamsConfig) {
        let e = refused_with(q, cfg);
        assert_400(&e, "error-invalid-params", &format!("\"{param}\""));
        assert_eq!(e.body["details"]["parameter"], param, "{}", e.body);
    }

    /// Asserts a `parseJsonQuery` 400 of type `ty` mentioning `needle`.
    fn assert_json(q: &str, ty: &str, needle: &str) {
        let e = refused_with(q, &cfg());
        assert_400(&e, ty, needle);
        assert_eq!(e.body["details"]["helperMethod"], "parseJsonQuery");
    }

    fn enc(s: &str) -> String {
        utf8_percent_encode(s, ENCODE).to_string()
    }

    // ---- RawQuery ----

    #[test]
    fn raw_pairs_are_decoded_in_order() {
        let r = RawQuery::parse(Some("a=1+2&b=%41%2b&&c&=x&room%49d=R&e=")).expect("parses");
        let want: Vec<(String, String)> = [
            ("a", "1 2"),
            ("b", "A+"),
            ("c", ""),
            ("", "x"),
            ("roomId", "R"),
            ("e", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(r.pairs(), want.as_slice());
        assert_eq!(RawQuery::parse(None).expect("none").pairs().len(), 0);
        assert_eq!(RawQuery::parse(Some("")).expect("empty").pairs().len(), 0);
        let r = RawQuery::parse(Some("v=%C3%A9=x")).expect("parses");
        assert_eq!(r.pairs()[0].1, "é=x");
    }

    #[test]
    fn raw_refuses_bad_escapes_and_utf8() {
        for (q, param) in [
            ("roomId=%zz", "roomId"),
            ("roomId=ab%4", "roomId"),
            ("count=%", "count"),
            ("roomId=%FF", "roomId"),
            ("sort=%C3", "sort"),
        ] {
            let e = RawQuery::parse(Some(q)).expect_err(q);
            assert_400(&e, "error-invalid-params", &format!("\"{param}\""));
            assert_eq!(e.body["details"]["parameter"], param);
        }
        let e = RawQuery::parse(Some("room%zzId=1")).expect_err("bad key");
        assert_400(&e, "error-invalid-params", "parameter name");
        let e = RawQuery::parse(Some("%FF=1")).expect_err("bad key");
        assert_400(&e, "error-invalid-params", "UTF-8");
    }

    #[test]
    fn raw_limits() {
        let ok = vec!["a=1"; MAX_PAIRS].join("&");
        assert!(RawQuery::parse(Some(&ok)).is_ok());
        let too_many = vec!["a=1"; MAX_PAIRS + 1].join("&");
        let e = RawQuery::parse(Some(&too_many)).expect_err("65 pairs");
        assert_400(&e, "error-invalid-params", "more than 64 parameters");
        let long = format!("roomId={}", "x".repeat(MAX_QUERY_BYTES));
        let e = RawQuery::parse(Some(&long)).expect_err("too long");
        assert_400(&e, "error-invalid-params", "longer than 16384 bytes");
    }

    #[test]
    fn access_token() {
        let t = |q: &str| RawQuery::parse(Some(q)).expect("parses");
        assert_eq!(t("roomId=R").access_token().expect("ok"), None);
        assert_eq!(
            t("access_token=abc").access_token().expect("ok"),
            Some("abc")
        );
        assert_eq!(t("access_token=").access_token().expect("ok"), None);
        for q in [
            "access_token=a&access_token=b",
            "access_token[]=a",
            "access_token[x]=a",
            "access_token=a&access_token[]=b",
        ] {
            let e = t(q).access_token().expect_err(q);
            assert_400(&e, "error-invalid-params", "\"access_token\"");
            assert_eq!(e.body["details"]["parameter"], "access_token");
        }
        let c = canon("roomId=R&access_token=tok%2Fx");
        assert_eq!(c.access_token.as_deref(), Some("tok/x"));
        assert_param("roomId=R&access_token=a&access_token=b", "access_token");
    }

    // ---- roomId ----

    #[test]
    fn room_id_missing_is_rocket_chats_own_error() {
        let want = ApiError::room_id_missing();
        for q in [
            "",
            "offset=0",
            "roomId=",
            "roomId=%20%09",
            "roomId=+",
            "roomid=R",
        ] {
            assert_eq!(refused_with(q, &cfg()), want, "{q:?}");
        }
        // roomId is checked first: other bad parameters do not mask a missing roomId.
        assert_eq!(refused_with("count=abc&offset=-1", &cfg()), want);
    }

    #[test]
    fn room_id_rules() {
        assert_param("roomId=a&roomId=b", "roomId");
        assert_param("roomId=a&room%49d=b", "roomId");
        assert_param("roomId[$ne]=x", "roomId");
        assert_param("roomId%5B%24ne%5D=x", "roomId");
        assert_param("roomId[]=a", "roomId");
        assert_param("roomId=a&roomId[]=b", "roomId");
        assert_param("[roomId]=x&roomId=y", "roomId");
        assert_param("roomId][=x", "roomId");
        assert_param(&format!("roomId={}", "r".repeat(129)), "roomId");
        assert_param("roomId=ab%00c", "roomId");
        assert_param("roomId=ab%0Ac", "roomId");
        assert_param("roomId=ab%C2%85", "roomId");
        let long = "é".repeat(128);
        assert_eq!(canon(&format!("roomId={}", enc(&long))).room_id, long);
        // Forwarded exactly as given, spaces included.
        assert_eq!(canon("roomId=+R+").room_id, " R ");
        assert_eq!(canon("roomId=a%2Fb%3Ac").room_id, "a/b:c");
    }

    // ---- offset and count ----

    #[test]
    fn offset_rules() {
        assert_eq!(canon("roomId=R").offset, 0);
        assert_eq!(canon("roomId=R&offset=10").offset, 10);
        assert_eq!(canon("roomId=R&offset=007").offset, 7);
        assert_eq!(canon("roomId=R&offset=1000000000").offset, MAX_OFFSET);
        for bad in [
            "abc",
            "1.5",
            "-1",
            "",
            "1e3",
            "+5",
            "%205",
            "5%20",
            "0x10",
            "%EF%BC%95",
        ] {
            assert_param(&format!("roomId=R&offset={bad}"), "offset");
        }
        for big in ["1000000001", "99999999999999999999999"] {
            let e = refused_with(&format!("roomId=R&offset={big}"), &cfg());
            assert_400(&e, "error-invalid-params", "too large");
        }
        assert_param("roomId=R&offset=1&offset=2", "offset");
        assert_param("roomId=R&offset[]=1", "offset");
        // offset is checked before count.
        let e = refused_with("roomId=R&offset=x&count=y", &cfg());
        assert_eq!(e.body["details"]["parameter"], "offset");
    }

    #[test]
    fn count_rules() {
        assert_eq!(canon("roomId=R").count, 50);
        assert_eq!(canon("roomId=R&count=20").count, 20);
        assert_eq!(canon("roomId=R&count=100").count, 100);
        assert_eq!(canon("roomId=R&count=101").count, 100);
        assert_eq!(canon("roomId=R&count=0").count, 100);
        assert_eq!(canon("roomId=R&count=00").count, 100);
        assert_eq!(
            canon("roomId=R&count=99999999999999999999999999").count,
            100
        );
        let unlimited = ParamsConfig {
            allow_unlimited_count: true,
            ..cfg()
        };
        assert_eq!(
            canon_with("roomId=R&count=0", &unlimited)
                .expect("ok")
                .count,
            0
        );
        for bad in [
            "abc", "1.5", "-1", "", "1e3", "+5", "%205", "+5", "-0", "NaN",
        ] {
            let q = format!("roomId=R&count={bad}");
            assert_param(&q, "count");
            let e = refused_with(&q, &cfg());
            assert_400(&e, "error-invalid-params", "non-negative integer");
        }
        assert_param("roomId=R&count[]=1", "count");
        assert_param("roomId=R&count[$gt]=1", "count");
        assert_param("roomId=R&count=1&count=2", "count");
    }

    // ---- sort ----

    #[test]
    fn sort_rules() {
        assert_eq!(canon("roomId=R").sort, None);
        assert_eq!(canon("roomId=R&sort=").sort, None);
        assert_eq!(canon("roomId=R&sort=%7B%7D").sort, None);
        assert_eq!(
            canon("roomId=R&sort=%7B+%22ts%22+%3A+-1+%7D")
                .sort
                .as_deref(),
            Some(r#"{"ts":-1}"#)
        );
        // Key order is sort priority: kept as given.
        assert_eq!(
            canon(r#"roomId=R&sort={"_updatedAt":1,"ts":-1}"#)
                .sort
                .as_deref(),
            Some(r#"{"_updatedAt":1,"ts":-1}"#)
        );
        for (bad, needle) in [
            (r#"{"msg":1}"#, "cannot sort on \"msg\""),
            (r#"{"$where":1}"#, "cannot sort on \"$where\""),
            (r#"{"ts":2}"#, "must be 1 or -1"),
            (r#"{"ts":1.0}"#, "must be 1 or -1"),
            (r#"{"ts":"1"}"#, "must be 1 or -1"),
            (r#"{"ts":{"$meta":"textScore"}}"#, "must be 1 or -1"),
            (r#"[1]"#, "JSON object"),
            (r#""ts""#, "JSON object"),
            ("ts", "not valid JSON"),
            (r#"{"ts":-1"#, "not valid JSON"),
        ] {
            assert_json(
                &format!("roomId=R&sort={}", enc(bad)),
                "error-invalid-sort",
                needle,
            );
        }
        assert_param("roomId=R&sort=a&sort=b", "sort");
        assert_param("roomId=R&sort[ts]=1", "sort");
    }

    // ---- fields ----

    #[test]
    fn fields_rules() {
        assert_eq!(
            canon(r#"roomId=R&fields={"ts":1,"msg":1,"u.username":1}"#)
                .fields
                .as_deref(),
            Some(r#"{"msg":1,"ts":1,"u.username":1}"#)
        );
        assert_eq!(
            canon(r#"roomId=R&fields={"attachments":0}"#)
                .fields
                .as_deref(),
            Some(r#"{"attachments":0}"#)
        );
        assert_eq!(canon("roomId=R&fields=%7B%7D").fields, None);
        let many: Vec<String> = (0..33).map(|i| format!("\"f{i}\":1")).collect();
        let too_many = format!("{{{}}}", many.join(","));
        let ok = format!("{{{}}}", many[..32].join(","));
        assert!(canon(&format!("roomId=R&fields={}", enc(&ok)))
            .fields
            .is_some());
        for (bad, needle) in [
            (r#"{"msg":1,"ts":0}"#, "all 1 (include) or all 0"),
            (r#"{"msg":2}"#, "must be 1 or 0"),
            (r#"{"msg":true}"#, "must be 1 or 0"),
            (r#"{"msg":1.0}"#, "must be 1 or 0"),
            (r#"{"msg":-1}"#, "must be 1 or 0"),
            (r#"{"$where":1}"#, "not a field path"),
            (r#"{"a.$":1}"#, "not a field path"),
            (r#"{"a..b":1}"#, "not a field path"),
            (r#"{"":1}"#, "not a field path"),
            (r#"{"__proto__":1}"#, "not allowed"),
            (r#"{"a.constructor":1}"#, "not allowed"),
            (&too_many, "more than 32 fields"),
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
        ] {
            assert_json(
                &format!("roomId=R&fields={}", enc(bad)),
                "error-invalid-fields",
                needle,
            );
        }
        assert_param("roomId=R&fields={}&fields={}", "fields");
        assert_param("roomId=R&fields[msg]=1", "fields");
    }

    // ---- query ----

    #[test]
    fn query_accepts_the_allow_list_and_sorts_keys() {
        let q = r#"{"u.username":"bob","t":null,"pinned":true,"tcount":3,"msg":{"$options":"i","$regex":"^hi"}}"#;
        assert_eq!(
            canon(&format!("roomId=R&query={}", enc(q)))
                .query
                .as_deref(),
            Some(
                r#"{"msg":{"$options":"i","$regex":"^hi"},"pinned":true,"t":null,"tcount":3,"u.username":"bob"}"#
            )
        );
        let q = r#"{"$or":[{"b":1},{"a":{"$regex":"x"}}],"$and":[{"z":"1","y":2.5}]}"#;
        assert_eq!(
            canon(&format!("roomId=R&query={}", enc(q)))
                .query
                .as_deref(),
            Some(r#"{"$and":[{"y":2.5,"z":"1"}],"$or":[{"b":1},{"a":{"$regex":"x"}}]}"#)
        );
        assert_eq!(canon("roomId=R&query=").query, None);
        assert_eq!(canon("roomId=R&query=%7B%7D").query, None);
        // Depth 4 exactly: top, $or item, $and item, $regex object.
        let deep = r#"{"$or":[{"$and":[{"a":{"$regex":"x"}}]}]}"#;
        assert!(canon(&format!("roomId=R&query={}", enc(deep)))
            .query
            .is_some());
    }

    #[test]
    fn query_refuses_everything_else() {
        let keys: Vec<String> = (0..33).map(|i| format!("\"k{i}\":1")).collect();
        let wide = format!("{{{}}}", keys.join(","));
        let regex_long = format!(r#"{{"msg":{{"$regex":"{}"}}}}"#, "a".repeat(257));
        let regex_ok = format!(r#"{{"msg":{{"$regex":"{}"}}}}"#, "a".repeat(256));
        assert!(canon(&format!("roomId=R&query={}", enc(&regex_ok)))
            .query
            .is_some());
        let too_deep = r#"{"$or":[{"$and":[{"$or":[{"$and":[{"a":1}]}]}]}]}"#;
        let too_deep_regex = r#"{"$or":[{"$and":[{"$or":[{"a":{"$regex":"x"}}]}]}]}"#;
        for (bad, needle) in [
            (
                r#"{"$where":"sleep(1000)"}"#,
                "operator \"$where\" is not allowed",
            ),
            (r#"{"msg":{"$ne":"x"}}"#, "operator \"$ne\" is not allowed"),
            (r#"{"ts":{"$gt":0}}"#, "operator \"$gt\" is not allowed"),
            (
                r#"{"$expr":{"$eq":[1,1]}}"#,
                "operator \"$expr\" is not allowed",
            ),
            (
                r#"{"$function":{}}"#,
                "operator \"$function\" is not allowed",
            ),
            (r#"{"$nor":[{"a":1}]}"#, "operator \"$nor\" is not allowed"),
            (
                r#"{"msg":{"$regex":"x","$where":"1"}}"#,
                "operator \"$where\" is not allowed",
            ),
            (r#"{"rid":"other"}"#, "\"rid\" is not allowed"),
            (r#"{"rid.x":"other"}"#, "\"rid.x\" is not allowed"),
            (r#"{"$or":[{"rid":"other"}]}"#, "\"rid\" is not allowed"),
            (
                r#"{"$and":[{"$or":[{"rid":{"$regex":"."}}]}]}"#,
                "\"rid\" is not allowed",
            ),
            (r#"{"__proto__":{"x":1}}"#, "not allowed"),
            (r#"{"a b":1}"#, "not a field path"),
            (
                r#"{"msg":["a"]}"#,
                "must be a string, number, boolean, null",
            ),
            (
                r#"{"msg":{"a":1}}"#,
                "must be a string, number, boolean, null",
            ),
            (
                r#"{"msg":{"$options":"i"}}"#,
                "must be a string, number, boolean, null",
            ),
            (r#"{"msg":{"$regex":1}}"#, "must be a string"),
            (
                r#"{"msg":{"$regex":"x","$options":"g"}}"#,
                "letters i, m, s and x",
            ),
            (
                r#"{"msg":{"$regex":"x","$options":1}}"#,
                "letters i, m, s and x",
            ),
            (&regex_long, "longer than 256 characters"),
            (r#"{"$and":[]}"#, "non-empty array"),
            (r#"{"$or":{"a":1}}"#, "non-empty array"),
            (r#"{"$or":[1]}"#, "non-empty array"),
            (too_deep, "deeper than 4 levels"),
            (too_deep_regex, "deeper than 4 levels"),
            (&wide, "more than 32 keys"),
            (
                r#"{"a":1.0715660391465826e-75}"#,
                "cannot be forwarded exactly",
            ),
            ("[]", "JSON object"),
            ("{'a':1}", "not valid JSON"),
        ] {
            assert_json(
                &format!("roomId=R&query={}", enc(bad)),
                "error-invalid-query",
                needle,
            );
        }
        assert_param("roomId=R&query[$where]=1", "query");
        assert_param("roomId=R&query={}&query={}", "query");
    }

    #[test]
    fn fields_are_checked_before_query() {
        let e = refused_with(
            &format!(
                "roomId=R&query={}&fields={}",
                enc(r#"{"$where":1}"#),
                enc("[]")
            ),
            &cfg(),
        );
        assert_eq!(e.body["errorType"], "error-invalid-fields");
    }

    #[test]
    fn reject_and_strip_modes() {
        let reject = ParamsConfig {
            query_and_fields: QueryAndFields::Reject,
            ..cfg()
        };
        let strip = ParamsConfig {
            query_and_fields: QueryAndFields::Strip,
            ..cfg()
        };
        assert_param_with(r#"roomId=R&query={"a":1}"#, "query", &reject);
        assert_param_with("roomId=R&query=", "query", &reject);
        assert_param_with("roomId=R&query[$where]=1", "query", &reject);
        assert_param_with(r#"roomId=R&fields={"a":1}&query=x"#, "fields", &reject);
        let e = refused_with("roomId=R&fields=1", &reject);
        assert!(e.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not accepted"));
        assert!(canon_with("roomId=R&sort={}", &reject).is_ok());
        let c = canon_with(
            r#"roomId=R&query={"$where":1}&fields=nonsense&query[x]=1"#,
            &strip,
        )
        .expect("stripped");
        assert_eq!((&c.query, &c.fields), (&None, &None));
        assert_eq!(c.to_query_string(), "roomId=R&offset=0&count=50");
    }

    #[test]
    fn other_keys_are_dropped() {
        let c = canon("roomId=R&foo=1&foo[bar]=2&room=x&RoomId=y&__proto__=z&_=1");
        assert_eq!(c.to_query_string(), "roomId=R&offset=0&count=50");
    }

    // ---- canonical form ----

    #[test]
    fn canonical_string() {
        let c = canon(
            r#"access_token=t%2Fk&fields={"b":1,"a":1}&query={"y":"a b","x":"é%26%3D"}&sort={"ts":-1}&count=20&offset=5&roomId=a%20b~c"#,
        );
        let q = "roomId=a%20b~c&offset=5&count=20\
             &sort=%7B%22ts%22%3A-1%7D\
             &query=%7B%22x%22%3A%22%C3%A9%26%3D%22%2C%22y%22%3A%22a%20b%22%7D\
             &fields=%7B%22a%22%3A1%2C%22b%22%3A1%7D";
        assert_eq!(c.cache_key(), q);
        assert_eq!(c.to_query_string(), format!("{q}&access_token=t%2Fk"));
    }

    #[test]
    fn one_logical_query_has_one_spelling() {
        let spellings = [
            "roomId=R&offset=0&count=50&sort=%7B%22ts%22:-1%7D",
            "roomId=R&offset=0&count=50&sort=%7B%22ts%22%3A-1%7D",
            r#"roomId=R&offset=0&count=50&sort={"ts":-1}"#,
            r#"sort={ "ts" : -1 }&count=50&roomId=R"#,
            "count=050&sort=%7b%22ts%22%3a-1%7d&offset=00&room%49d=R&x=1",
            r#"roomId=R&sort={"ts":-1}&fields={}&query="#,
        ];
        let want = canon(spellings[0]).to_query_string();
        for s in spellings {
            assert_eq!(canon(s).to_query_string(), want, "{s:?}");
        }
        let a = canon(r#"roomId=a/b:c&query={"b":{"$regex":"x/y:z"},"a":1}"#);
        let b = canon("query=%7B%22a%22%3A1%2C%22b%22%3A%7B%22%24regex%22%3A%22x%2Fy%3Az%22%7D%7D&roomId=a%2Fb%3Ac");
        assert_eq!(a.to_query_string(), b.to_query_string());
    }

    /// A JSON scalar for generated queries.
    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(|f| Value::from((f * 1000.0).round() / 1000.0)),
            "[ -~é/&=+%]{0,12}".prop_map(Value::from),
        ]
    }

    /// A field path for generated queries.
    fn arb_path() -> impl Strategy<Value = String> {
        "[a-zA-Z_][a-zA-Z0-9_]{0,6}(\\.[a-zA-Z0-9_]{1,4}){0,2}".prop_filter(
            "not rid or a prototype key",
            |p| {
                let first = p.split('.').next().unwrap_or_default();
                first != "rid" && !p.split('.').any(|s| PROTOTYPE_KEYS.contains(&s))
            },
        )
    }

    /// A valid `query` object, depth at most 3 and at most 3 keys per object.
    fn arb_query() -> impl Strategy<Value = Value> {
        let leaf = (
            arb_path(),
            prop_oneof![
                arb_scalar(),
                ("[a-z.*^$]{0,10}", "[imsx]{0,3}")
                    .prop_map(|(r, o)| { serde_json::json!({"$regex": r, "$options": o}) }),
            ],
        )
            .prop_map(|(k, v)| {
                let mut m = Map::new();
                m.insert(k, v);
                Value::Object(m)
            });
        leaf.prop_recursive(2, 9, 3, |inner| {
            (
                prop::sample::select(vec!["$and", "$or"]),
                prop::collection::vec(inner, 1..3),
                arb_path(),
                arb_scalar(),
            )
                .prop_map(|(op, items, k, v)| {
                    let mut m = Map::new();
                    m.insert(k, v);
                    m.insert(op.to_string(), Value::Array(items));
                    Value::Object(m)
                })
        })
    }

    fn arb_raw_query() -> impl Strategy<Value = String> {
        (
            "[^\\x00-\\x1f\\x7f-\\u{9f}]{1,20}".prop_filter("not blank", |s| !s.trim().is_empty()),
            prop::option::of(0u64..2000),
            prop::option::of(0u64..300),
            prop::option::of(prop::sample::select(vec![
                r#"{"ts":-1}"#,
                r#"{"ts":1}"#,
                r#"{"_updatedAt":1,"ts":-1}"#,
                r#"{"ts":-1,"_updatedAt":1}"#,
                "{}",
            ])),
            prop::option::of(arb_query()),
            prop::option::of(prop::collection::btree_set(arb_path(), 1..5)),
            prop::option::of("[ -~]{1,10}"),
            any::<bool>(),
        )
            .prop_map(
                |(room, offset, count, sort, query, fields, token, shuffle)| {
                    let mut pairs = vec![format!("roomId={}", enc(&room))];
                    if let Some(o) = offset {
                        pairs.push(format!("offset={o}"));
                    }
                    if let Some(c) = count {
                        pairs.push(format!("count={c}"));
                    }
                    if let Some(s) = sort {
                        pairs.push(format!("sort={}", enc(s)));
                    }
                    if let Some(q) = query {
                        pairs.push(format!("query={}", enc(&q.to_string())));
                    }
                    if let Some(f) = fields {
                        let obj: Map<String, Value> =
                            f.into_iter().rev().map(|k| (k, Value::from(1))).collect();
                        pairs.push(format!("fields={}", enc(&Value::Object(obj).to_string())));
                    }
                    if let Some(t) = token {
                        pairs.push(format!("access_token={}", enc(&t)));
                    }
                    pairs.push("ignored=1".to_string());
                    if shuffle {
                        pairs.reverse();
                    }
                    pairs.join("&")
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn canonical_form_is_a_fixed_point(q in arb_raw_query(), unlimited in any::<bool>()) {
            let cfg = ParamsConfig { allow_unlimited_count: unlimited, ..ParamsConfig::default() };
            let first = match canon_with(&q, &cfg) {
                Ok(c) => c,
                Err(e) => return Err(TestCaseError::fail(format!("{q:?} refused: {}", e.body))),
            };
            let s = first.to_query_string();
            let again = canon_with(&s, &cfg).map_err(|e| TestCaseError::fail(e.body.to_string()))?;
            prop_assert_eq!(&again, &first);
            prop_assert_eq!(again.to_query_string(), s.clone());
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=".contains(&b)));
            prop_assert!(first.count <= cfg.max_count);
        }

        #[test]
        fn arbitrary_query_strings_never_panic(q in "[ -~]{0,60}") {
            if let Ok(raw) = RawQuery::parse(Some(&q)) {
                if let Ok(c) = CanonicalQuery::from_raw(&raw, &ParamsConfig::default()) {
                    let again = canon_with(&c.to_query_string(), &ParamsConfig::default());
                    prop_assert_eq!(again.ok(), Some(c));
                }
            }
        }
    }
}
