//! The raw query string split into decoded `(key, value)` pairs, and the strict checks that
//! every forwarded parameter is exactly one plain value (`spec/shim.md` §4).
//!
//! Rocket.Chat parses query strings with `qs`, which turns `roomId[$ne]=x` into an object and a
//! repeated key into an array, both of which reach MongoDB (`spec/rocketchat-reference.md`
//! §3.6); [`RawQuery::single`] refuses both, naming the parameter.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::{MAX_PAIRS, MAX_QUERY_BYTES};
use crate::error::ApiError;

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

/// The query string split into decoded `(key, value)` pairs, in order.
///
/// Keys and values are percent-decoded and `+` is a space, as `qs` does; empty pieces
/// (`a=1&&b=2`) are skipped and a piece without `=` has an empty value. A key or value with
/// nothing to decode is borrowed from the query string, not copied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawQuery<'a> {
    pairs: Vec<Pair<'a>>,
}

/// One decoded `(key, value)` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair<'a>(pub Cow<'a, str>, pub Cow<'a, str>);

impl PartialEq<(String, String)> for Pair<'_> {
    fn eq(&self, other: &(String, String)) -> bool {
        self.0 == other.0.as_str() && self.1 == other.1.as_str()
    }
}

impl<'a> RawQuery<'a> {
    /// Parses the raw query string (without the `?`).
    ///
    /// Refused with a 400 `error-invalid-params`: more than [`MAX_QUERY_BYTES`] bytes or
    /// [`MAX_PAIRS`] pairs, a `%` not followed by two hex digits, or bytes that are not UTF-8
    /// once decoded. The error names the parameter when its name could be decoded.
    pub fn parse(raw: Option<&'a str>) -> Result<RawQuery<'a>, ApiError> {
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
            pairs.push(Pair(key, value));
        }
        Ok(RawQuery { pairs })
    }

    /// The decoded pairs, in the order given.
    pub fn pairs(&self) -> &[Pair<'a>] {
        &self.pairs
    }

    /// The `access_token` credential if exactly one was given. A repeated or bracketed
    /// `access_token` is a 400; an empty one counts as absent.
    pub fn access_token(&self) -> Result<Option<&str>, ApiError> {
        Ok(self.single("access_token")?.filter(|t| !t.is_empty()))
    }

    /// The one plain value of `name`, if given: a repeat, or a key that spells `name` with
    /// brackets (`name[]`, `name[$ne]`, `[name]`), is refused naming the parameter.
    pub(super) fn single(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for Pair(key, value) in &self.pairs {
            if key == name {
                if found.is_some() {
                    return Err(ApiError::invalid_param(name, "must be given only once"));
                }
                found = Some(value.as_ref());
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
    pub(super) fn mentions(&self, name: &str) -> bool {
        self.pairs
            .iter()
            .any(|Pair(key, _)| key == name || bracket_base(key) == Some(name))
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
///
/// Stricter than `percent_encoding` (which passes a stray `%` through): every `%` must start
/// an escape, because `qs` and the shim must not read one component two ways.
fn decode_component(s: &str) -> Result<Cow<'_, str>, DecodeError> {
    if !s.contains(['%', '+']) {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let stray = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if stray {
        return Err(DecodeError::BadEscape);
    }
    let spaced: Cow<'_, str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|d| Cow::Owned(d.into_owned()))
        .map_err(|_| DecodeError::NotUtf8)
}

/// A caller-supplied name cut to 64 characters for an error message.
pub(super) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}
