//! Validation of the JSON parameters `fields` and `query` (`spec/shim.md` §4, "sanitize"):
//! an allow-list of field paths, equality, `$regex` and `$and`/`$or`, bounded in keys and
//! depth, re-serialised compactly with keys sorted. Everything else (`$where`, `$ne`, `$gt`,
//! `$expr`, `$function`, prototype keys, `rid`) is refused with Rocket.Chat's own
//! `parseJsonQuery` errors.

use serde_json::{Map, Value};

use super::raw::shorten;
use super::{MAX_JSON_KEYS, MAX_QUERY_DEPTH, MAX_REGEX_CHARS};
use crate::config::is_field_path;
use crate::error::ApiError;

/// Keys that could reach a JavaScript prototype on the upstream, refused in `query`/`fields`
/// (Rocket.Chat's own `clean()` deletes them too).
pub(super) const PROTOTYPE_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// `fields`: a JSON object of at most [`MAX_JSON_KEYS`] field paths whose values are all the
/// integer 1 (include) or all 0 (exclude). Re-serialised compactly with keys sorted.
pub(super) fn fields(value: &str) -> Result<Option<String>, ApiError> {
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
pub(super) fn query(value: &str) -> Result<Option<String>, ApiError> {
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
pub(super) fn parse_object(value: &str) -> Result<Map<String, Value>, String> {
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
