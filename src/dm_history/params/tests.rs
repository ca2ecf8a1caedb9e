//! Unit and property tests of the query parameters: decoding, every rule, the canonical
//! spelling and its round trip.

use super::filter::PROTOTYPE_KEYS;
use super::*;
use http::StatusCode;
use proptest::prelude::*;
use serde_json::Map;

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
    fn t(q: &str) -> RawQuery<'_> {
        RawQuery::parse(Some(q)).expect("parses")
    }
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
