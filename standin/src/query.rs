//! Query-string parsing and a tiny MongoDB emulation, as Rocket.Chat 6.x applies them.
//!
//! * [`parse_qs`] parses a query string the way node's `qs` does (Restivus/connect use it):
//!   percent-decoding of keys and values, `+` as a space, `a[b]=x` objects, `a[]=x` and
//!   `a[0]=x` arrays, repeated keys combined into arrays, depth 5, array limit 20.
//! * [`js_string`], [`js_truthy`], [`parse_int`] mimic the JavaScript coercions the server code
//!   relies on (`String(x)`, `!x`, `parseInt`).
//! * [`pagination`] is `getPaginationItems`, [`parse_json_query`] is the G3 `parseJsonQuery`
//!   (with the G3 `clean()` of `query`).
//! * [`find`] runs a filter/sort/skip/limit/projection over in-memory documents with MongoDB's
//!   semantics for the small subset of operators that can survive `clean()`, and
//!   [`match_id_filter`] emulates `findOne({_id: <roomId>})` for operator objects.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Maximum bracket depth `qs` honours by default.
const QS_DEPTH: usize = 5;
/// Highest array index `qs` turns into an array (larger ones become object keys).
const QS_ARRAY_LIMIT: usize = 20;
/// Maximum number of `&`-separated parameters `qs` looks at.
const QS_PARAMETER_LIMIT: usize = 1000;

/// Keys of `Object.prototype`; `qs` silently drops keys that would shadow them.
const PROTOTYPE_KEYS: &[&str] = &[
    "constructor",
    "__defineGetter__",
    "__defineSetter__",
    "hasOwnProperty",
    "__lookupGetter__",
    "__lookupSetter__",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "toString",
    "valueOf",
    "__proto__",
    "toLocaleString",
];

/// Fields Rocket.Chat never lets a caller select or query (`API.v1.defaultFieldsToExclude`).
pub const DEFAULT_FIELDS_TO_EXCLUDE: &[&str] = &["joinCode", "members", "importIds", "e2e"];

/// Internal marker key for an EJSON regular expression (`{"$regexp":..,"$flags":..}`); it can
/// never come from JSON text because it starts with a NUL character.
const REGEXP_MARKER: &str = "\u{0}regexp";
const REGEXP_FLAGS_MARKER: &str = "\u{0}flags";

/// A value while `qs` builds it: arrays may be sparse, like JavaScript arrays.
#[derive(Debug, Clone)]
enum Qs {
    Str(String),
    Bool,
    Arr(BTreeMap<usize, Qs>),
    Obj(Vec<(String, Qs)>),
}

impl Qs {
    fn is_object(&self) -> bool {
        matches!(self, Qs::Arr(_) | Qs::Obj(_))
    }

    /// JavaScript `[].concat(self)`: arrays are spread, anything else becomes one element.
    fn concat_items(self) -> Vec<Qs> {
        match self {
            Qs::Arr(m) => m.into_values().collect(),
            other => vec![other],
        }
    }

    fn into_value(self) -> Value {
        match self {
            Qs::Str(s) => Value::String(s),
            Qs::Bool => Value::Bool(true),
            // `utils.compact` removes the holes of sparse arrays.
            Qs::Arr(m) => Value::Array(m.into_values().map(Qs::into_value).collect()),
            Qs::Obj(v) => {
                let mut map = Map::new();
                for (k, val) in v {
                    map.insert(k, val.into_value());
                }
                Value::Object(map)
            }
        }
    }
}

fn arr_len(m: &BTreeMap<usize, Qs>) -> usize {
    m.keys().next_back().map_or(0, |k| k + 1)
}

fn dense(items: Vec<Qs>) -> Qs {
    Qs::Arr(items.into_iter().enumerate().collect())
}

fn obj_get_mut<'a>(obj: &'a mut [(String, Qs)], key: &str) -> Option<&'a mut Qs> {
    obj.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `utils.merge` of `qs`.
fn merge(target: Qs, source: Qs) -> Qs {
    if !source.is_object() {
        return match target {
            Qs::Arr(mut m) => {
                let len = arr_len(&m);
                m.insert(len, source);
                Qs::Arr(m)
            }
            Qs::Obj(mut o) => {
                if let Qs::Str(key) = source {
                    if !PROTOTYPE_KEYS.contains(&key.as_str())
                        && obj_get_mut(&mut o, &key).is_none()
                    {
                        o.push((key, Qs::Bool));
                    }
                }
                Qs::Obj(o)
            }
            scalar => dense(vec![scalar, source]),
        };
    }
    if !target.is_object() {
        let mut items = vec![target];
        items.extend(source.concat_items());
        return dense(items);
    }
    match (target, source) {
        (Qs::Arr(mut t), Qs::Arr(s)) => {
            for (i, item) in s {
                match t.remove(&i) {
                    Some(existing) if existing.is_object() && item.is_object() => {
                        t.insert(i, merge(existing, item));
                    }
                    Some(existing) => {
                        t.insert(i, existing);
                        let len = arr_len(&t);
                        t.insert(len, item);
                    }
                    None => {
                        t.insert(i, item);
                    }
                }
            }
            Qs::Arr(t)
        }
        (target, source) => {
            let mut acc = match target {
                Qs::Arr(m) => m.into_iter().map(|(i, v)| (i.to_string(), v)).collect(),
                Qs::Obj(o) => o,
                _ => Vec::new(),
            };
            let entries: Vec<(String, Qs)> = match source {
                Qs::Arr(m) => m.into_iter().map(|(i, v)| (i.to_string(), v)).collect(),
                Qs::Obj(o) => o,
                _ => Vec::new(),
            };
            for (key, value) in entries {
                if let Some(pos) = acc.iter().position(|(k, _)| *k == key) {
                    let existing = std::mem::replace(&mut acc[pos].1, Qs::Bool);
                    acc[pos].1 = merge(existing, value);
                } else {
                    acc.push((key, value));
                }
            }
            Qs::Obj(acc)
        }
    }
}

/// Strict percent-decoding with UTF-8 validation, like `decodeURIComponent`.
fn decode_uri_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `qs` decoder: `+` is a space, then `decodeURIComponent`, falling back to the raw text.
pub fn qs_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    decode_uri_component(&plus).unwrap_or(plus)
}

/// Splits a key into its `qs` segments (`a[b][]` -> `a`, `[b]`, `[]`); `None` drops the key.
fn split_key(key: &str) -> Option<Vec<String>> {
    // Positions of every `[...]` group without nested brackets (the `qs` regex).
    let mut groups = Vec::new();
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'[' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'[' && bytes[j] != b']' {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b']' {
                groups.push((i, j + 1));
                i = j + 1;
                continue;
            }
            if j < bytes.len() {
                // hit another '[': the match may start there
                i = j;
                continue;
            }
        }
        i += 1;
    }
    let parent = match groups.first() {
        Some(&(start, _)) => &key[..start],
        None => key,
    };
    let mut keys = Vec::new();
    if !parent.is_empty() {
        if PROTOTYPE_KEYS.contains(&parent) {
            return None;
        }
        keys.push(parent.to_string());
    }
    for (n, &(start, end)) in groups.iter().enumerate() {
        if n == QS_DEPTH {
            keys.push(format!("[{}]", &key[start..]));
            break;
        }
        let inner = &key[start + 1..end - 1];
        if PROTOTYPE_KEYS.contains(&inner) {
            return None;
        }
        keys.push(key[start..end].to_string());
    }
    Some(keys)
}

/// `parseObject` of `qs`: builds the nested value for one key chain.
fn parse_object(chain: &[String], val: Qs) -> Qs {
    let mut leaf = val;
    for root in chain.iter().rev() {
        leaf = if root == "[]" {
            dense(leaf.concat_items())
        } else {
            let clean = if root.len() >= 2 && root.starts_with('[') && root.ends_with(']') {
                &root[1..root.len() - 1]
            } else {
                root.as_str()
            };
            let index = clean
                .parse::<usize>()
                .ok()
                .filter(|i| i.to_string() == clean);
            match index {
                Some(i) if root != clean && i <= QS_ARRAY_LIMIT => {
                    let mut m = BTreeMap::new();
                    m.insert(i, leaf);
                    Qs::Arr(m)
                }
                _ if clean == "__proto__" => Qs::Obj(Vec::new()),
                _ => Qs::Obj(vec![(clean.to_string(), leaf)]),
            }
        };
    }
    leaf
}

/// Parses a query string (without the leading `?`) like node's `qs.parse` with its defaults.
pub fn parse_qs(query: &str) -> Map<String, Value> {
    // First pass: decode and combine repeated keys (`utils.combine`).
    let mut temp: Vec<(String, Qs)> = Vec::new();
    for part in query.split('&').take(QS_PARAMETER_LIMIT) {
        let pos = match part.find("]=") {
            Some(p) => Some(p + 1),
            None => part.find('='),
        };
        let (key, val) = match pos {
            None => (qs_decode(part), String::new()),
            Some(p) => (qs_decode(&part[..p]), qs_decode(&part[p + 1..])),
        };
        if key.is_empty() {
            continue;
        }
        if let Some(existing) = obj_get_mut(&mut temp, &key) {
            let old = std::mem::replace(existing, Qs::Bool);
            let mut items = old.concat_items();
            items.push(Qs::Str(val));
            *existing = dense(items);
        } else {
            temp.push((key, Qs::Str(val)));
        }
    }
    // Second pass: expand bracket keys and merge everything into one object.
    let mut result = Qs::Obj(Vec::new());
    for (key, val) in temp {
        if let Some(chain) = split_key(&key) {
            if chain.is_empty() {
                continue;
            }
            result = merge(result, parse_object(&chain, val));
        }
    }
    match result.into_value() {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// JavaScript `String(value)` for values that come out of `qs` or JSON.
pub fn js_string(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|e| match e {
                Value::Null => String::new(),
                other => js_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_string(),
    }
}

/// JavaScript truthiness (`!!value`); `None` is `undefined`.
pub fn js_truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Some(Value::Array(_)) | Some(Value::Object(_)) => true,
    }
}

/// JavaScript `parseInt(s)` (radix omitted): `None` is `NaN`. Saturates at the `i64` range.
pub fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if rest.len() >= 2 && (rest.starts_with("0x") || rest.starts_with("0X")) {
        (16, &rest[2..])
    } else {
        (10, rest)
    };
    let mut value: i128 = 0;
    let mut any = false;
    for c in digits.chars() {
        match c.to_digit(radix) {
            Some(d) => {
                any = true;
                value = (value * i128::from(radix) + i128::from(d)).min(i128::from(i64::MAX) + 1);
            }
            None => break,
        }
    }
    if !any {
        return None;
    }
    let signed = if neg { -value } else { value };
    Some(signed.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// The pagination settings `getPaginationItems` reads.
#[derive(Debug, Clone, Copy)]
pub struct PaginationSettings {
    /// `API_Default_Count`.
    pub default_count: i64,
    /// `API_Upper_Count_Limit`.
    pub upper_limit: i64,
    /// `API_Allow_Infinite_Count`.
    pub allow_infinite: bool,
}

impl Default for PaginationSettings {
    fn default() -> Self {
        PaginationSettings {
            default_count: 50,
            upper_limit: 100,
            allow_infinite: true,
        }
    }
}

/// Result of `getPaginationItems`; `None` stands for JavaScript `NaN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pagination {
    /// `offset` as parsed (not validated).
    pub offset: Option<i64>,
    /// `count` after the default, the upper limit and the infinite-count rule.
    pub count: Option<i64>,
}

/// `getPaginationItems(params)` of Rocket.Chat 6.x.
pub fn pagination(params: &Map<String, Value>, settings: PaginationSettings) -> Pagination {
    let upper = if settings.upper_limit <= 0 {
        100
    } else {
        settings.upper_limit
    };
    let default = if settings.default_count <= 0 {
        50
    } else {
        settings.default_count
    };
    let offset = if js_truthy(params.get("offset")) {
        params.get("offset").and_then(|v| parse_int(&js_string(v)))
    } else {
        Some(0)
    };
    let mut count = match params.get("count") {
        None => Some(default),
        Some(v) if !js_truthy(Some(v)) => Some(0),
        Some(v) => parse_int(&js_string(v)),
    };
    if let Some(c) = count {
        if c > upper {
            count = Some(upper);
        }
        if c == 0 && !settings.allow_infinite {
            count = Some(default);
        }
    }
    Pagination { offset, count }
}

/// A Rocket.Chat `Meteor.Error` turned into an API failure: `error`, `errorType`, `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFailure {
    /// The `error` string, `"<reason> [<error-id>]"` for Meteor errors.
    pub error: String,
    /// The bare error id, if any.
    pub error_type: Option<String>,
    /// `details`, if any.
    pub details: Option<Value>,
}

impl ApiFailure {
    /// A `Meteor.Error(id, reason, details)`.
    pub fn meteor(id: &str, reason: &str, details: Option<Value>) -> Self {
        ApiFailure {
            error: format!("{reason} [{id}]"),
            error_type: Some(id.to_string()),
            details,
        }
    }

    /// A plain (driver or JavaScript) error: only a message.
    pub fn plain(message: impl Into<String>) -> Self {
        ApiFailure {
            error: message.into(),
            error_type: None,
            details: None,
        }
    }

    /// The JSON body `API.v1.failure` produces.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("success".into(), Value::Bool(false));
        m.insert("error".into(), Value::String(self.error.clone()));
        if let Some(t) = &self.error_type {
            m.insert("errorType".into(), Value::String(t.clone()));
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        Value::Object(m)
    }
}

fn parse_json_details() -> Option<Value> {
    Some(serde_json::json!({"helperMethod": "parseJsonQuery"}))
}

/// The output of `parseJsonQuery`.
#[derive(Debug, Clone, Default)]
pub struct JsonQuery {
    /// The parsed `sort`, if given (`None` means the route's default).
    pub sort: Option<Map<String, Value>>,
    /// The projection after the default exclusions were merged in.
    pub fields: Map<String, Value>,
    /// The cleaned `query` (an object; `rid` is added by the caller).
    pub query: Map<String, Value>,
}

fn is_one_of(v: &Value, allowed: &[f64]) -> bool {
    v.as_f64().is_some_and(|f| allowed.contains(&f))
}

/// `Object.entries(x)` of parsed JSON; `None` when it would throw (`null`).
fn js_entries(v: &Value) -> Option<Vec<(String, Value)>> {
    match v {
        Value::Null => None,
        Value::Object(m) => Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Value::Array(a) => Some(
            a.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.clone()))
                .collect(),
        ),
        Value::String(s) => Some(
            s.chars()
                .enumerate()
                .map(|(i, c)| (i.to_string(), Value::String(c.to_string())))
                .collect(),
        ),
        Value::Bool(_) | Value::Number(_) => Some(Vec::new()),
    }
}

/// `Object.assign({}, x)` of parsed JSON.
fn js_assign_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => js_entries(&other).unwrap_or_default().into_iter().collect(),
    }
}

/// Meteor's EJSON type adjustment for the types a query can reasonably carry: `$date` becomes
/// an ISO string (our stored dates are ISO strings) and `$regexp` a regular-expression marker.
fn ejson_adjust(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if m.len() == 1 {
                if let Some(d) = m.get("$date") {
                    let iso = match d {
                        Value::Number(n) => n.as_i64().map(crate::data::iso_from_millis),
                        Value::String(s) => {
                            crate::data::parse_iso(s).map(crate::data::iso_from_millis)
                        }
                        _ => None,
                    };
                    if let Some(iso) = iso {
                        return Value::String(iso);
                    }
                }
            }
            if m.len() == 2 {
                if let (Some(Value::String(p)), Some(Value::String(f))) =
                    (m.get("$regexp"), m.get("$flags"))
                {
                    let mut out = Map::new();
                    out.insert(REGEXP_MARKER.into(), Value::String(p.clone()));
                    out.insert(REGEXP_FLAGS_MARKER.into(), Value::String(f.clone()));
                    return Value::Object(out);
                }
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, ejson_adjust(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(ejson_adjust).collect()),
        other => other,
    }
}

/// The G3 `clean(query, ['$or', '$and', '$regex'])`: recursively deletes every `$` key not in
/// the allow list, and the keys `constructor`, `__proto__`, `prototype`.
pub fn clean(v: Value) -> Value {
    const ALLOW: &[&str] = &["$or", "$and", "$regex"];
    const DENY: &[&str] = &["constructor", "__proto__", "prototype"];
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !DENY.contains(&k.as_str()))
                .filter(|(k, _)| !k.starts_with('$') || ALLOW.contains(&k.as_str()))
                .map(|(k, v)| (k, clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(clean).collect()),
        other => other,
    }
}

fn first_segment(k: &str) -> &str {
    k.split('.').next().unwrap_or(k)
}

/// `parseJsonQuery()` of Rocket.Chat 6.x (G3) for the `sort`, `fields` and `query` parameters.
pub fn parse_json_query(params: &Map<String, Value>) -> Result<JsonQuery, ApiFailure> {
    let mut out = JsonQuery::default();

    if js_truthy(params.get("sort")) {
        let raw = params.get("sort").map(js_string).unwrap_or_default();
        let invalid = || {
            ApiFailure::meteor(
                "error-invalid-sort",
                &format!("Invalid sort parameter provided: \"{raw}\""),
                parse_json_details(),
            )
        };
        let parsed: Value = serde_json::from_str(&raw).map_err(|_| invalid())?;
        let entries = js_entries(&parsed).ok_or_else(invalid)?;
        if entries.iter().any(|(_, v)| !is_one_of(v, &[1.0, -1.0])) {
            return Err(invalid());
        }
        match parsed {
            Value::Object(m) => out.sort = Some(m),
            // A number or boolean has no entries and passes the check; MongoDB then refuses it.
            _ => return Err(ApiFailure::plain("Invalid sort format")),
        }
    }

    let mut fields = Map::new();
    if js_truthy(params.get("fields")) {
        let raw = params.get("fields").map(js_string).unwrap_or_default();
        let invalid = || {
            ApiFailure::meteor(
                "error-invalid-fields",
                &format!("Invalid fields parameter provided: \"{raw}\""),
                parse_json_details(),
            )
        };
        let parsed: Value = serde_json::from_str(&raw).map_err(|_| invalid())?;
        let entries = js_entries(&parsed).ok_or_else(invalid)?;
        if entries.iter().any(|(_, v)| !is_one_of(v, &[1.0, 0.0])) {
            return Err(invalid());
        }
        if parsed.is_object() || parsed.is_array() {
            fields = js_assign_object(parsed);
            fields.retain(|k, _| !DEFAULT_FIELDS_TO_EXCLUDE.contains(&first_segment(k)));
        }
    }
    for k in DEFAULT_FIELDS_TO_EXCLUDE {
        fields.insert((*k).to_string(), Value::from(0));
    }
    out.fields = fields;

    if js_truthy(params.get("query")) {
        let raw = params.get("query").map(js_string).unwrap_or_default();
        let parsed: Value = serde_json::from_str(&raw).map_err(|_| {
            ApiFailure::meteor(
                "error-invalid-query",
                &format!("Invalid query parameter provided: \"{raw}\""),
                parse_json_details(),
            )
        })?;
        let mut query = js_assign_object(clean(ejson_adjust(parsed)));
        query.retain(|k, _| !DEFAULT_FIELDS_TO_EXCLUDE.contains(&first_segment(k)));
        out.query = query;
    }
    Ok(out)
}

/// BSON type order used when comparing values of different types.
fn type_rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(Value::Object(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Bool(_)) => 8,
    }
}

/// MongoDB's total order on values (missing equals null).
pub fn mongo_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let o = mongo_cmp(Some(p), Some(q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for ((kp, p), (kq, q)) in x.iter().zip(y.iter()) {
                let o = mongo_cmp(Some(p), Some(q)).then_with(|| kp.as_bytes().cmp(kq.as_bytes()));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

fn mongo_eq(a: &Value, b: &Value) -> bool {
    type_rank(Some(a)) == type_rank(Some(b)) && mongo_cmp(Some(a), Some(b)) == Ordering::Equal && {
        // objects must also have the same key order
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => x.keys().eq(y.keys()),
            _ => true,
        }
    }
}

/// The value at a dotted path, without array traversal (used for sorting).
fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// All values a dotted path reaches, descending into arrays like MongoDB does.
fn path_values<'a>(doc: &'a Value, path: &[&str], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(doc);
        return;
    };
    match doc {
        Value::Object(m) => {
            if let Some(v) = m.get(*first) {
                path_values(v, rest, out);
            }
        }
        Value::Array(a) => {
            if let Some(v) = first.parse::<usize>().ok().and_then(|i| a.get(i)) {
                path_values(v, rest, out);
            }
            for e in a {
                if e.is_object() {
                    path_values(e, path, out);
                }
            }
        }
        _ => {}
    }
}

fn build_regex(pattern: &str, options: &str) -> Result<regex::Regex, ApiFailure> {
    let mut b = regex::RegexBuilder::new(pattern);
    for c in options.chars() {
        match c {
            'i' => {
                b.case_insensitive(true);
            }
            'm' => {
                b.multi_line(true);
            }
            's' => {
                b.dot_matches_new_line(true);
            }
            'x' => {
                b.ignore_whitespace(true);
            }
            'u' => {}
            other => {
                return Err(ApiFailure::plain(format!(
                    "invalid flag in regex options: {other}"
                )))
            }
        }
    }
    b.size_limit(1 << 20).build().map_err(|e| {
        let text = e.to_string();
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid pattern");
        ApiFailure::plain(format!(
            "Regular expression is invalid: {}",
            last.trim().trim_start_matches("error: ")
        ))
    })
}

fn candidates_match(cands: &[&Value], pred: &dyn Fn(&Value) -> bool) -> bool {
    cands
        .iter()
        .any(|v| pred(v) || matches!(v, Value::Array(a) if a.iter().any(pred)))
}

/// Whether `cond` (the value of a field in a filter) matches the values found at the path.
fn field_matches(cands: &[&Value], cond: &Value) -> Result<bool, ApiFailure> {
    if let Value::Object(m) = cond {
        if let Some(Value::String(p)) = m.get(REGEXP_MARKER) {
            let flags = m
                .get(REGEXP_FLAGS_MARKER)
                .and_then(Value::as_str)
                .unwrap_or("");
            let re = build_regex(p, flags)?;
            return Ok(candidates_match(cands, &|v| {
                v.as_str().is_some_and(|s| re.is_match(s))
            }));
        }
        if m.keys().next().is_some_and(|k| k.starts_with('$')) {
            let mut ok = true;
            for (op, arg) in m {
                let hit = match op.as_str() {
                    "$regex" => {
                        let pattern = arg
                            .as_str()
                            .ok_or_else(|| ApiFailure::plain("$regex has to be a string"))?;
                        let opts = m.get("$options").and_then(Value::as_str).unwrap_or("");
                        let re = build_regex(pattern, opts)?;
                        candidates_match(cands, &|v| v.as_str().is_some_and(|s| re.is_match(s)))
                    }
                    "$options" => {
                        if !m.contains_key("$regex") {
                            return Err(ApiFailure::plain("$options needs a $regex"));
                        }
                        true
                    }
                    _ => compare_op(cands, op, arg)?,
                };
                ok &= hit;
            }
            return Ok(ok);
        }
    }
    if cond.is_null() && cands.is_empty() {
        return Ok(true);
    }
    Ok(cands.iter().any(|v| {
        mongo_eq(v, cond) || matches!(v, Value::Array(a) if a.iter().any(|e| mongo_eq(e, cond)))
    }))
}

/// `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$in`, `$nin` on candidate values.
fn compare_op(cands: &[&Value], op: &str, arg: &Value) -> Result<bool, ApiFailure> {
    let same_type_cmp = |v: &Value, pred: &dyn Fn(Ordering) -> bool| {
        type_rank(Some(v)) == type_rank(Some(arg)) && pred(mongo_cmp(Some(v), Some(arg)))
    };
    Ok(match op {
        "$eq" => candidates_match(cands, &|v| mongo_eq(v, arg)),
        "$ne" => !cands.iter().any(|v| mongo_eq(v, arg)),
        "$gt" => candidates_match(cands, &|v| same_type_cmp(v, &|o| o == Ordering::Greater)),
        "$gte" => candidates_match(cands, &|v| same_type_cmp(v, &|o| o != Ordering::Less)),
        "$lt" => candidates_match(cands, &|v| same_type_cmp(v, &|o| o == Ordering::Less)),
        "$lte" => candidates_match(cands, &|v| same_type_cmp(v, &|o| o != Ordering::Greater)),
        "$in" | "$nin" => {
            let list = arg
                .as_array()
                .ok_or_else(|| ApiFailure::plain(format!("{op} needs an array")))?;
            let hit = candidates_match(cands, &|v| list.iter().any(|e| mongo_eq(v, e)));
            if op == "$in" {
                hit
            } else {
                !hit
            }
        }
        other => return Err(ApiFailure::plain(format!("unknown operator: {other}"))),
    })
}

/// Whether `doc` matches the filter `query` (a subset of MongoDB's query language).
pub fn matches(doc: &Value, query: &Map<String, Value>) -> Result<bool, ApiFailure> {
    for (key, cond) in query {
        let ok = match key.as_str() {
            "$and" | "$or" => {
                let list = cond
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| ApiFailure::plain("$and/$or/$nor must be a nonempty array"))?;
                let mut results = Vec::with_capacity(list.len());
                for sub in list {
                    let sub = sub.as_object().ok_or_else(|| {
                        ApiFailure::plain("$or/$and/$nor entries need to be full objects")
                    })?;
                    results.push(matches(doc, sub)?);
                }
                if key == "$and" {
                    results.iter().all(|b| *b)
                } else {
                    results.iter().any(|b| *b)
                }
            }
            k if k.starts_with('$') => {
                return Err(ApiFailure::plain(format!(
                    "unknown top level operator: {k}"
                )))
            }
            path => {
                let segs: Vec<&str> = path.split('.').collect();
                let mut cands = Vec::new();
                path_values(doc, &segs, &mut cands);
                field_matches(&cands, cond)?
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Emulates `findOne({_id: id})` over `ids` (in natural order) for an `_id` that came from the
/// query string: a string matches exactly, an operator object (`{"$ne": "x"}`) is evaluated,
/// any other object or array matches nothing. Returns the index of the first match.
pub fn match_id_filter(ids: &[&str], id: &Value) -> Result<Option<usize>, ApiFailure> {
    for (i, candidate) in ids.iter().enumerate() {
        let v = Value::String((*candidate).to_string());
        let hit = match id {
            Value::Object(m) if m.keys().next().is_some_and(|k| k.starts_with('$')) => {
                let mut ok = true;
                for (op, arg) in m {
                    if !op.starts_with('$') {
                        return Err(ApiFailure::plain(format!("unknown operator: {op}")));
                    }
                    ok &= field_matches(
                        &[&v],
                        &Value::Object(Map::from_iter([(op.clone(), arg.clone())])),
                    )?;
                }
                ok
            }
            other => mongo_eq(&v, other),
        };
        if hit {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Applies a projection the way Rocket.Chat's `BaseRaw` and MongoDB do: if any field is
/// included, every `0` entry is dropped first (`doNotMixInclusionAndExclusionFields`, which
/// also drops `_id: 0`) and only the included paths plus `_id` are kept; otherwise the listed
/// paths are removed.
pub fn project(doc: &Value, fields: &Map<String, Value>) -> Value {
    let inclusion = fields.values().any(|v| !is_one_of(v, &[0.0]));
    if inclusion {
        let mut paths: Vec<Vec<&str>> = fields
            .iter()
            .filter(|(_, v)| !is_one_of(v, &[0.0]))
            .map(|(k, _)| k.split('.').collect())
            .collect();
        paths.push(vec!["_id"]);
        include_paths(doc, &paths)
    } else {
        let mut out = doc.clone();
        for k in fields.keys() {
            remove_path(&mut out, &k.split('.').collect::<Vec<_>>());
        }
        out
    }
}

fn include_paths(doc: &Value, paths: &[Vec<&str>]) -> Value {
    match doc {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let sub: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p.first() == Some(&k.as_str()))
                    .map(|p| p[1..].to_vec())
                    .collect();
                if sub.is_empty() {
                    continue;
                }
                if sub.iter().any(|p| p.is_empty()) {
                    out.insert(k.clone(), v.clone());
                } else if v.is_object() || v.is_array() {
                    out.insert(k.clone(), include_paths(v, &sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.is_object())
                .map(|e| include_paths(e, paths))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn remove_path(doc: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match doc {
        Value::Object(m) => {
            if rest.is_empty() {
                m.shift_remove(*first);
            } else if let Some(v) = m.get_mut(*first) {
                remove_path(v, rest);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|e| remove_path(e, path)),
        _ => {}
    }
}

/// Sorts documents by a MongoDB sort specification; ties keep natural order.
pub fn sort_docs(docs: &mut [&Value], sort: &Map<String, Value>) {
    docs.sort_by(|a, b| {
        for (k, dir) in sort {
            let o = mongo_cmp(get_path(a, k), get_path(b, k));
            let o = if dir.as_f64().is_some_and(|d| d < 0.0) {
                o.reverse()
            } else {
                o
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

/// The result of [`find`].
#[derive(Debug, Clone)]
pub struct Found {
    /// The page of projected documents.
    pub docs: Vec<Value>,
    /// How many documents matched the filter (`countDocuments`).
    pub total: usize,
}

/// `find(filter, {sort, skip, limit, projection})` plus `countDocuments(filter)`, with the
/// driver's limit rules (`0` = unlimited, negative = `abs(n)`).
pub fn find(
    docs: &[Value],
    filter: &Map<String, Value>,
    sort: &Map<String, Value>,
    p: Pagination,
    fields: &Map<String, Value>,
) -> Result<Found, ApiFailure> {
    let skip = match p.offset {
        Some(o) if o >= 0 => o as usize,
        Some(o) => {
            return Err(ApiFailure::plain(format!(
                "BSON field 'skip' value must be >= 0, actual value '{o}'"
            )))
        }
        None => {
            return Err(ApiFailure::plain(
                "BSON field 'skip' value must be >= 0, actual value 'NaN'",
            ))
        }
    };
    let limit = match p.count {
        Some(0) => usize::MAX,
        Some(c) => usize::try_from(c.unsigned_abs()).unwrap_or(usize::MAX),
        None => {
            return Err(ApiFailure::plain(
                "BSON field 'limit' value must be >= 0, actual value 'NaN'",
            ))
        }
    };
    let mut hits = Vec::new();
    for d in docs {
        if matches(d, filter)? {
            hits.push(d);
        }
    }
    sort_docs(&mut hits, sort);
    let total = hits.len();
    let page = hits
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|d| project(d, fields))
        .collect();
    Ok(Found { docs: page, total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qs(s: &str) -> Value {
        Value::Object(parse_qs(s))
    }

    #[test]
    fn qs_plain_and_decoding() {
        assert_eq!(
            qs("roomId=abc&count=5"),
            json!({"roomId":"abc","count":"5"})
        );
        assert_eq!(
            qs("a=b+c%20d&room%49d=x"),
            json!({"a":"b c d","roomId":"x"})
        );
        assert_eq!(qs("sort=%7B%22ts%22:-1%7D"), json!({"sort":"{\"ts\":-1}"}));
        assert_eq!(qs("bad=%zz%&flag"), json!({"bad":"%zz%","flag":""}));
        assert_eq!(qs("&&=x&a=1&"), json!({"a":"1"}));
    }

    #[test]
    fn qs_repeats_and_arrays() {
        assert_eq!(qs("a=1&a=2&a=3"), json!({"a":["1","2","3"]}));
        assert_eq!(qs("a[]=1&a[]=2"), json!({"a":["1","2"]}));
        assert_eq!(qs("a[1]=y&a[0]=x"), json!({"a":["x","y"]}));
        assert_eq!(qs("a[5]=x"), json!({"a":["x"]}));
        assert_eq!(qs("a[21]=x"), json!({"a":{"21":"x"}}));
        assert_eq!(qs("a=1&a[]=2"), json!({"a":["1","2"]}));
    }

    #[test]
    fn qs_objects() {
        assert_eq!(qs("roomId[$ne]=x"), json!({"roomId":{"$ne":"x"}}));
        assert_eq!(qs("roomId%5B%24ne%5D=x"), json!({"roomId":{"$ne":"x"}}));
        assert_eq!(
            qs("a[b][c]=1&a[b][d]=2"),
            json!({"a":{"b":{"c":"1","d":"2"}}})
        );
        assert_eq!(qs("r[$in][]=a&r[$in][]=b"), json!({"r":{"$in":["a","b"]}}));
        assert_eq!(qs("a[b]=1&a=2"), json!({"a":{"b":"1","2":true}}));
        assert_eq!(qs("a=2&a[b]=1"), json!({"a":["2",{"b":"1"}]}));
        assert_eq!(
            qs("a[b][c][d][e][f][g]=1"),
            json!({"a":{"b":{"c":{"d":{"e":{"f":{"[g]":"1"}}}}}}})
        );
        assert_eq!(qs("toString=1&a[constructor]=2&b=3"), json!({"b":"3"}));
    }

    #[test]
    fn js_helpers() {
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("  -7abc"), Some(-7));
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("1e3"), Some(1));
        assert_eq!(parse_int("abc"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("99999999999999999999999"), Some(i64::MAX));
        assert_eq!(js_string(&json!(["5", "6"])), "5,6");
        assert_eq!(js_string(&json!({"$ne":"x"})), "[object Object]");
        assert!(!js_truthy(Some(&json!(""))));
        assert!(js_truthy(Some(&json!([]))));
    }

    fn pg(s: &str) -> Pagination {
        pagination(&parse_qs(s), PaginationSettings::default())
    }

    #[test]
    fn pagination_rules() {
        assert_eq!(
            pg(""),
            Pagination {
                offset: Some(0),
                count: Some(50)
            }
        );
        assert_eq!(
            pg("offset=10&count=20"),
            Pagination {
                offset: Some(10),
                count: Some(20)
            }
        );
        assert_eq!(
            pg("count=500"),
            Pagination {
                offset: Some(0),
                count: Some(100)
            }
        );
        assert_eq!(
            pg("count=0"),
            Pagination {
                offset: Some(0),
                count: Some(0)
            }
        );
        assert_eq!(
            pg("count="),
            Pagination {
                offset: Some(0),
                count: Some(0)
            }
        );
        assert_eq!(
            pg("count=-100000"),
            Pagination {
                offset: Some(0),
                count: Some(-100000)
            }
        );
        assert_eq!(
            pg("count=abc&offset=x"),
            Pagination {
                offset: None,
                count: None
            }
        );
        assert_eq!(
            pg("offset=&count=7&count=9"),
            Pagination {
                offset: Some(0),
                count: Some(7)
            }
        );
        let strict = PaginationSettings {
            allow_infinite: false,
            ..Default::default()
        };
        assert_eq!(pagination(&parse_qs("count=0"), strict).count, Some(50));
    }

    #[test]
    fn json_query_checks() {
        let err = parse_json_query(&parse_qs("sort=%7B%22ts%22:2%7D")).unwrap_err();
        assert_eq!(
            err.body(),
            json!({"success":false,"error":"Invalid sort parameter provided: \"{\"ts\":2}\" [error-invalid-sort]",
                   "errorType":"error-invalid-sort","details":{"helperMethod":"parseJsonQuery"}})
        );
        assert!(parse_json_query(&parse_qs("fields=nope")).is_err());
        assert!(parse_json_query(&parse_qs("query=%7B")).is_err());
        let q = parse_json_query(&parse_qs(
            "query=%7B%22msg%22:%7B%22$regex%22:%22a%22,%22$options%22:%22i%22%7D,%22$where%22:%221%22,%22e2e%22:1%7D",
        ))
        .unwrap();
        assert_eq!(Value::Object(q.query), json!({"msg":{"$regex":"a"}}));
        assert_eq!(q.fields.get("joinCode"), Some(&json!(0)));
    }

    #[test]
    fn matching_and_projection() {
        let doc = json!({"_id":"m1","msg":"Hello there","u":{"username":"bob"},"tags":["x","y"],"ts":"2024"});
        let q = |v: Value| matches(&doc, v.as_object().unwrap()).unwrap();
        assert!(q(json!({"u.username":"bob"})));
        assert!(!q(json!({"u.username":"alice"})));
        assert!(q(json!({"tags":"y"})));
        assert!(q(json!({"msg":{"$regex":"^Hello"}})));
        assert!(!q(json!({"msg":{"$regex":"^hello"}})));
        assert!(q(json!({"msg":{"$regex":"^hello","$options":"i"}})));
        assert!(q(json!({"$or":[{"msg":"no"},{"_id":"m1"}]})));
        assert!(!q(json!({"$and":[{"msg":"no"},{"_id":"m1"}]})));
        assert!(!q(json!({"ts":{}})));
        assert!(q(json!({"missing":null})));
        let incl = project(&doc, json!({"msg":1,"_id":0,"e2e":0}).as_object().unwrap());
        assert_eq!(incl, json!({"_id":"m1","msg":"Hello there"}));
        let excl = project(&doc, json!({"u.username":0,"tags":0}).as_object().unwrap());
        assert_eq!(
            excl,
            json!({"_id":"m1","msg":"Hello there","u":{},"ts":"2024"})
        );
    }

    #[test]
    fn id_filters() {
        let ids = ["a", "b", "c"];
        assert_eq!(match_id_filter(&ids, &json!("b")).unwrap(), Some(1));
        assert_eq!(match_id_filter(&ids, &json!({"$ne":"a"})).unwrap(), Some(1));
        assert_eq!(match_id_filter(&ids, &json!({"$gt":"b"})).unwrap(), Some(2));
        assert_eq!(
            match_id_filter(&ids, &json!({"$in":["c"]})).unwrap(),
            Some(2)
        );
        assert_eq!(match_id_filter(&ids, &json!({"x":"a"})).unwrap(), None);
        assert!(match_id_filter(&ids, &json!({"$where":"1"})).is_err());
        assert!(match_id_filter(&ids, &json!({"$in":"c"})).is_err());
    }
}
