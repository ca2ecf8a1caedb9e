//! The Rocket.Chat REST endpoints the stand-in serves, with Rocket.Chat 6.x ("G3") bodies,
//! status codes and order of checks: `/api/info`, `/api/v1/login`, `/api/v1/me`,
//! `/api/v1/permissions.listAll`, `/api/v1/settings/:id`, `{im,dm}.messages.others`,
//! `{im,dm}.list.everyone`, `{im,dm}.counters` and `rooms.adminRooms.getRoom` (a room's admin
//! fields, whose `uids`/`usernames` are the members the shim's audit records name).
//!
//! Routing follows Restivus/connect-route: the path is `decodeURI`-decoded, leading and
//! trailing runs of `/` and whitespace are trimmed, and segments are compared case-sensitively.

use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::data::{iso_from_millis, parse_iso, State, User, BASE_MILLIS};
use crate::query::{
    find, js_string, js_truthy, match_id_filter, pagination, parse_json_query, parse_qs,
    ApiFailure, PaginationSettings,
};

/// The version `/api/info` reports unless [`crate::Standin::set_version`] changed it.
pub const VERSION: &str = "6.13.0";

/// An API answer: status, JSON body and extra headers.
#[derive(Debug, Clone)]
pub(crate) struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    fn new(status: StatusCode, body: Value) -> Self {
        ApiResponse {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn ok(body: Value) -> Self {
        Self::new(StatusCode::OK, body)
    }

    fn failure(f: &ApiFailure) -> Self {
        Self::new(StatusCode::BAD_REQUEST, f.body())
    }
}

const NOT_LOGGED_IN: &str = "You must be logged in to do this.";

fn not_logged_in() -> ApiResponse {
    ApiResponse::new(
        StatusCode::UNAUTHORIZED,
        json!({"success": false, "error": NOT_LOGGED_IN, "status": "error", "message": NOT_LOGGED_IN}),
    )
}

/// 403 of `permissionsRequired` in Rocket.Chat 6.x.
fn permission_denied() -> ApiResponse {
    ApiResponse::new(
        StatusCode::FORBIDDEN,
        json!({"success": false, "error": "User does not have the permissions required for this action [error-unauthorized]"}),
    )
}

/// 403 of the inline `API.v1.unauthorized()`.
fn unauthorized() -> ApiResponse {
    ApiResponse::new(
        StatusCode::FORBIDDEN,
        json!({"success": false, "error": "unauthorized"}),
    )
}

fn with_success(v: Value) -> Value {
    match v {
        Value::Object(mut m) => {
            m.insert("success".into(), Value::Bool(true));
            Value::Object(m)
        }
        other => other,
    }
}

/// `decodeURI`: decodes `%XX` escapes except those of reserved characters; `None` when
/// JavaScript would throw `URIError`.
fn decode_uri(s: &str) -> Option<String> {
    const RESERVED: &[u8] = b";/?:@&=+$,#";
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if RESERVED.contains(&v) {
                out.extend_from_slice(&b[i..i + 3]);
            } else {
                out.push(v);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a request path into Restivus route segments, or `None` if it is not an `/api` path.
pub(crate) fn api_segments(raw_path: &str) -> Option<Result<Vec<String>, ()>> {
    let Some(decoded) = decode_uri(raw_path) else {
        return raw_path.starts_with("/api").then_some(Err(()));
    };
    let trimmed = decoded.trim_matches(|c: char| c == '/' || c.is_whitespace());
    let segs: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    (segs.first().map(String::as_str) == Some("api")).then_some(Ok(segs))
}

/// Which endpoint a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Info,
    Login,
    Me,
    PermissionsListAll,
    Setting,
    MessagesOthers,
    ListEveryone,
    Counters,
    AdminGetRoom,
}

fn route_of(segs: &[String]) -> Option<(Route, Option<&str>)> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    Some(match s.as_slice() {
        ["api", "info"] => (Route::Info, None),
        ["api", "v1", "login"] => (Route::Login, None),
        ["api", "v1", "me"] => (Route::Me, None),
        ["api", "v1", "permissions.listAll"] => (Route::PermissionsListAll, None),
        ["api", "v1", "settings", id] => (Route::Setting, Some(*id)),
        ["api", "v1", "im.messages.others" | "dm.messages.others"] => (Route::MessagesOthers, None),
        ["api", "v1", "im.list.everyone" | "dm.list.everyone"] => (Route::ListEveryone, None),
        ["api", "v1", "im.counters" | "dm.counters"] => (Route::Counters, None),
        ["api", "v1", "rooms.adminRooms.getRoom"] => (Route::AdminGetRoom, None),
        _ => return None,
    })
}

/// Handles a request for an `/api/...` path. `body` is the (possibly truncated) request body.
pub(crate) fn handle(
    state: &mut State,
    method: &Method,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResponse {
    let segs = match api_segments(raw_path) {
        Some(Ok(segs)) => segs,
        _ => {
            return ApiResponse::new(
                StatusCode::BAD_REQUEST,
                json!({"success": false, "error": "URI malformed"}),
            )
        }
    };
    let Some((route, arg)) = route_of(&segs) else {
        return ApiResponse::new(
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": "API endpoint does not exist"}),
        );
    };
    let allowed: &str = if route == Route::Login { "POST" } else { "GET" };
    let method_ok = match route {
        Route::Login => method == Method::POST,
        _ => method == Method::GET || method == Method::HEAD,
    };
    if !method_ok {
        let mut r = ApiResponse::new(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"status": "error", "message": "API endpoint does not exist"}),
        );
        r.headers.push(("allow", allowed.to_string()));
        return r;
    }
    let params = parse_qs(raw_query);
    match route {
        Route::Info => ApiResponse::ok(json!({"version": state.version, "success": true})),
        Route::Login => login(state, headers, body),
        _ => {
            let Some(user) = authenticate(state, headers, &params) else {
                return not_logged_in();
            };
            match route {
                Route::Me => ApiResponse::ok(with_success(State::me_doc(&user))),
                Route::PermissionsListAll => permissions_list_all(state, &params),
                Route::Setting => setting(state, &user, arg.unwrap_or_default()),
                Route::MessagesOthers => messages_others(state, &user, &params),
                Route::ListEveryone => list_everyone(state, &user, &params),
                Route::Counters => counters(state, &user, &params),
                Route::AdminGetRoom => admin_get_room(state, &user, &params),
                Route::Info | Route::Login => not_logged_in(),
            }
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Resolves the caller: `X-User-Id` + `X-Auth-Token`, then `Authorization: Bearer`, then the
/// `access_token` query parameter (the first credential that is valid wins).
pub(crate) fn authenticate(
    state: &State,
    headers: &HeaderMap,
    params: &Map<String, Value>,
) -> Option<User> {
    if let (Some(uid), Some(token)) = (
        header_str(headers, "x-user-id"),
        header_str(headers, "x-auth-token"),
    ) {
        if let Some(u) = state
            .user(uid)
            .filter(|u| !u.token.is_empty() && u.token == token)
        {
            return Some(u.clone());
        }
    }
    let bearer = header_str(headers, "authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let query_token = params
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    for token in [bearer, query_token].into_iter().flatten() {
        if let Some(u) = state.bearer.get(&token).and_then(|uid| state.user(uid)) {
            return Some(u.clone());
        }
    }
    None
}

fn login(state: &State, headers: &HeaderMap, body: &[u8]) -> ApiResponse {
    let is_form = header_str(headers, "content-type").is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let doc: Map<String, Value> = if is_form {
        parse_qs(&String::from_utf8_lossy(body))
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            _ if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
            _ => {
                return ApiResponse::new(
                    StatusCode::BAD_REQUEST,
                    json!({"status": "error", "message": "Unexpected token in JSON body"}),
                )
            }
        }
    };
    let failed = || {
        ApiResponse::new(
            StatusCode::UNAUTHORIZED,
            json!({"status": "error", "error": "Unauthorized", "message": "Unauthorized"}),
        )
    };
    let user = if let Some(Value::String(resume)) = doc.get("resume") {
        state
            .users
            .iter()
            .find(|u| !u.token.is_empty() && &u.token == resume)
    } else {
        let name = doc
            .get("user")
            .or_else(|| doc.get("username"))
            .and_then(Value::as_str);
        let Some(name) = name else { return failed() };
        let found = state.users.iter().find(|u| {
            u.username == name || format!("{}@example.com", u.username).eq_ignore_ascii_case(name)
        });
        let password_ok = |u: &User| match doc.get("password") {
            Some(Value::String(p)) => *p == u.password,
            Some(Value::Object(p)) => {
                use sha2::Digest;
                let digest = hex(&sha2::Sha256::digest(u.password.as_bytes()));
                p.get("digest")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.eq_ignore_ascii_case(&digest))
            }
            _ => false,
        };
        found.filter(|u| password_ok(u))
    };
    match user {
        Some(u) => ApiResponse::ok(json!({
            "status": "success",
            "data": {"authToken": u.token, "userId": u.id, "me": State::me_doc(u)},
        })),
        None => failed(),
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn permissions_list_all(state: &State, params: &Map<String, Value>) -> ApiResponse {
    let since = if js_truthy(params.get("updatedSince")) {
        let raw = params
            .get("updatedSince")
            .map(js_string)
            .unwrap_or_default();
        match parse_iso(&raw) {
            Some(ms) => Some(ms),
            None => {
                return ApiResponse::failure(&ApiFailure::meteor(
                    "error-roomId-param-invalid",
                    "Invalid date for `updatedSince`",
                    None,
                ))
            }
        }
    } else {
        None
    };
    let update: Vec<Value> = state
        .permissions
        .iter()
        .filter(|p| !matches!(since, Some(s) if p.updated_ms <= s))
        .map(
            |p| json!({"_id": p.id, "roles": p.roles, "_updatedAt": iso_from_millis(p.updated_ms)}),
        )
        .collect();
    ApiResponse::ok(json!({"update": update, "remove": [], "success": true}))
}

fn setting(state: &State, user: &User, id: &str) -> ApiResponse {
    if !state.has_permission(user, "view-privileged-setting") {
        return permission_denied();
    }
    match state.settings.get(id) {
        Some(v) => ApiResponse::ok(json!({"_id": id, "value": v, "success": true})),
        None => ApiResponse::new(StatusCode::BAD_REQUEST, json!({"success": false})),
    }
}

fn pagination_settings(state: &State) -> PaginationSettings {
    let d = PaginationSettings::default();
    PaginationSettings {
        default_count: state
            .settings
            .get("API_Default_Count")
            .and_then(Value::as_i64)
            .unwrap_or(d.default_count),
        upper_limit: state
            .settings
            .get("API_Upper_Count_Limit")
            .and_then(Value::as_i64)
            .unwrap_or(d.upper_limit),
        allow_infinite: js_truthy(state.settings.get("API_Allow_Infinite_Count")),
    }
}

fn sort_or(sort: Option<Map<String, Value>>, key: &str, dir: i64) -> Map<String, Value> {
    sort.unwrap_or_else(|| Map::from_iter([(key.to_string(), Value::from(dir))]))
}

fn messages_others(state: &State, user: &User, params: &Map<String, Value>) -> ApiResponse {
    if !state.has_permission(user, "view-room-administration") {
        return permission_denied();
    }
    if state
        .settings
        .get("API_Enable_Direct_Message_History_EndPoint")
        != Some(&Value::Bool(true))
    {
        return ApiResponse::failure(&ApiFailure::meteor(
            "error-endpoint-disabled",
            "This endpoint is disabled",
            Some(json!({"route": "/api/v1/im.messages.others"})),
        ));
    }
    let room_id = match params.get("roomId") {
        Some(v) if js_truthy(Some(v)) => v,
        _ => {
            return ApiResponse::failure(&ApiFailure::meteor(
                "error-roomid-param-not-provided",
                "The parameter \"roomId\" is required",
                None,
            ))
        }
    };
    if room_id.is_array() {
        return ApiResponse::failure(&ApiFailure::plain("roomId.trim is not a function"));
    }
    let ids: Vec<&str> = state.rooms.iter().map(|r| r.room.id.as_str()).collect();
    let found = match match_id_filter(&ids, room_id) {
        Ok(found) => found,
        Err(e) => return ApiResponse::failure(&e),
    };
    let Some(rd) = found
        .map(|i| &state.rooms[i])
        .filter(|rd| rd.room.kind == 'd')
    else {
        return ApiResponse::failure(&ApiFailure::meteor(
            "error-room-not-found",
            &format!(
                "No direct message room found by the id of: {}",
                js_string(room_id)
            ),
            None,
        ));
    };
    let page = pagination(params, pagination_settings(state));
    let jq = match parse_json_query(params) {
        Ok(jq) => jq,
        Err(e) => return ApiResponse::failure(&e),
    };
    let mut filter = jq.query;
    filter.insert("rid".into(), Value::String(rd.room.id.clone()));
    let sort = sort_or(jq.sort, "ts", -1);
    match find(&rd.messages, &filter, &sort, page, &jq.fields) {
        Ok(found) => ApiResponse::ok(json!({
            "messages": found.docs,
            "offset": page.offset,
            "count": found.docs.len(),
            "total": found.total,
            "success": true,
        })),
        Err(e) => ApiResponse::failure(&e),
    }
}

fn list_everyone(state: &State, user: &User, params: &Map<String, Value>) -> ApiResponse {
    if !state.has_permission(user, "view-room-administration") {
        return permission_denied();
    }
    let page = pagination(params, pagination_settings(state));
    let jq = match parse_json_query(params) {
        Ok(jq) => jq,
        Err(e) => return ApiResponse::failure(&e),
    };
    let docs: Vec<Value> = state.rooms.iter().map(|rd| state.room_doc(rd)).collect();
    let mut filter = jq.query;
    filter.insert("t".into(), Value::String("d".into()));
    let sort = sort_or(jq.sort, "name", 1);
    match find(&docs, &filter, &sort, page, &jq.fields) {
        Ok(found) => ApiResponse::ok(json!({
            "ims": found.docs,
            "offset": page.offset,
            "count": found.docs.len(),
            "total": found.total,
            "success": true,
        })),
        Err(e) => ApiResponse::failure(&e),
    }
}

fn counters(state: &State, user: &User, params: &Map<String, Value>) -> ApiResponse {
    let access = state.has_permission(user, "view-room-administration");
    let room_id = match params.get("roomId") {
        Some(v) if js_truthy(Some(v)) => js_string(v),
        _ => {
            return ApiResponse::failure(&ApiFailure::meteor(
                "error-room-param-not-provided",
                "Body param \"roomId\" is required",
                None,
            ))
        }
    };
    let mut target = Some(user.clone());
    if js_truthy(params.get("userId")) {
        if !access {
            return unauthorized();
        }
        let uid = params.get("userId").map(js_string).unwrap_or_default();
        target = state.user(&uid).cloned();
    }
    let room = state.rooms.iter().find(|rd| rd.room.id == room_id);
    let member = |rd: &&crate::data::RoomData| {
        target
            .as_ref()
            .is_some_and(|t| rd.room.usernames.contains(&t.username))
    };
    let can_access = room.is_some_and(|rd| rd.room.kind == 'c' || member(&rd));
    let Some(rd) = room.filter(|_| can_access) else {
        return unauthorized();
    };
    if rd.room.kind != 'd' {
        return ApiResponse::failure(&ApiFailure::meteor(
            "error-room-not-found",
            "The required \"roomId\" or \"username\" param provided does not match any direct message",
            None,
        ));
    }
    let joined = member(&rd);
    let latest = rd
        .messages
        .last()
        .and_then(|m| m.get("ts").cloned())
        .unwrap_or_else(|| Value::String(iso_from_millis(BASE_MILLIS)));
    let show = access || joined;
    ApiResponse::ok(json!({
        "joined": joined,
        "members": if show { json!(rd.room.usernames.len()) } else { Value::Null },
        "unreads": if joined { json!(0) } else { Value::Null },
        "unreadsFrom": Value::Null,
        "msgs": if show { json!(rd.messages.len()) } else { Value::Null },
        "latest": if show { latest } else { Value::Null },
        "userMentions": if joined { json!(0) } else { Value::Null },
        "success": true,
    }))
}

/// `GET /api/v1/rooms.adminRooms.getRoom?rid=` (Rocket.Chat 2.4+, spec/rocketchat-reference.md
/// §11): the query schema requires `rid`; `findAdminRoom` gives nothing without
/// `view-room-administration` or for an unknown room, answered with
/// `API.v1.failure('not-allowed', 'Not Allowed')`, whose string form puts the first argument
/// in `error` and the second in `errorType`; else the room's admin fields and `success`.
fn admin_get_room(state: &State, user: &User, params: &Map<String, Value>) -> ApiResponse {
    let rid = match params.get("rid") {
        Some(Value::String(rid)) => rid.clone(),
        _ => {
            return ApiResponse::failure(&ApiFailure::meteor(
                "invalid-params",
                "must have required property 'rid'",
                None,
            ))
        }
    };
    let not_allowed = || {
        ApiResponse::failure(&ApiFailure {
            error: "not-allowed".into(),
            error_type: Some("Not Allowed".into()),
            details: None,
        })
    };
    if !state.has_permission(user, "view-room-administration") {
        return not_allowed();
    }
    let Some(rd) = state.rooms.iter().find(|rd| rd.room.id == rid) else {
        return not_allowed();
    };
    // The admin projection: no last message, no message bodies.
    let mut doc = state.room_doc(rd);
    if let Value::Object(m) = &mut doc {
        for k in ["lastMessage", "lm", "_updatedAt", "sysMes"] {
            m.remove(k);
        }
    }
    ApiResponse::ok(with_success(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Seed;

    fn call(state: &mut State, path_query: &str, user: &str) -> (u16, Value) {
        let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
        let mut h = HeaderMap::new();
        if !user.is_empty() {
            h.insert("x-user-id", format!("{user}-id").parse().unwrap());
            h.insert("x-auth-token", format!("{user}-token").parse().unwrap());
        }
        let r = handle(state, &Method::GET, path, query, &h, b"");
        (r.status.as_u16(), r.body)
    }

    #[test]
    fn order_of_checks() {
        let mut s = State::from_seed(Seed::default());
        let p = "/api/v1/im.messages.others?roomId=alice-idbob-id";
        assert_eq!(call(&mut s, p, "").0, 401);
        assert_eq!(call(&mut s, p, "alice").0, 403);
        s.settings.insert(
            "API_Enable_Direct_Message_History_EndPoint".into(),
            json!("true"),
        );
        assert_eq!(call(&mut s, p, "alice").0, 403);
        let (st, body) = call(&mut s, p, "admin");
        assert_eq!(st, 400);
        assert_eq!(body["errorType"], "error-endpoint-disabled");
        s.settings.insert(
            "API_Enable_Direct_Message_History_EndPoint".into(),
            json!(true),
        );
        assert_eq!(
            call(&mut s, "/api/v1/dm.messages.others", "admin").1["errorType"],
            "error-roomid-param-not-provided"
        );
        let (st, body) = call(&mut s, "/api/v1/dm.messages.others?roomId=GENERAL", "admin");
        assert_eq!(st, 400);
        assert_eq!(
            body["error"],
            "No direct message room found by the id of: GENERAL [error-room-not-found]"
        );
        let (st, body) = call(&mut s, p, "admin");
        assert_eq!(st, 200);
        assert_eq!(body["count"], 50);
        assert_eq!(body["total"], 120);
        assert_eq!(body["messages"][0]["_id"], "alice-idbob-id-m120");
    }

    #[test]
    fn vulnerabilities_are_reproduced() {
        let mut s = State::from_seed(Seed::default());
        let (_, b) = call(
            &mut s,
            "/api/v1/im.messages.others?roomId[$ne]=alice-idbob-id&count=0",
            "admin",
        );
        assert_eq!(b["total"], 3);
        assert_eq!(b["count"], 3);
        let (_, b) = call(
            &mut s,
            "/api/v1/im.messages.others?roomId=alice-idbob-id&count=-1000",
            "admin",
        );
        assert_eq!(b["count"], 120);
        let (st, b) = call(&mut s, "/api/v1/im.messages.others?roomId[]=a", "admin");
        assert_eq!((st, b["success"].clone()), (400, json!(false)));
        let (_, b) = call(
            &mut s,
            "/api/v1/im.messages.others?roomId=alice-idbob-id&query=%7B%22u.username%22%3A%22bob%22%7D&sort=%7B%22ts%22%3A1%7D",
            "admin",
        );
        assert_eq!(b["total"], 60);
        assert_eq!(b["messages"][0]["_id"], "alice-idbob-id-m2");
    }

    #[test]
    fn other_endpoints() {
        let mut s = State::from_seed(Seed::default());
        assert_eq!(
            call(&mut s, "/api/v1/me", "bob").1["roles"],
            json!(["user"])
        );
        assert_eq!(
            call(&mut s, "/api/v1/settings/API_Default_Count", "bob").0,
            403
        );
        assert_eq!(
            call(&mut s, "/api/v1/settings/API_Default_Count", "admin").1["value"],
            50
        );
        assert_eq!(
            call(&mut s, "/api/v1/settings/Nope", "admin").1,
            json!({"success": false})
        );
        let (_, b) = call(&mut s, "/api/v1/im.list.everyone", "admin");
        assert_eq!(b["total"], 3);
        assert_eq!(b["ims"][0]["lastMessage"]["_id"], "alice-idbob-id-m120");
        let (_, b) = call(
            &mut s,
            "/api/v1/im.counters?roomId=alice-idbob-id&userId=bob-id",
            "admin",
        );
        assert_eq!(
            (b["joined"].clone(), b["msgs"].clone()),
            (json!(true), json!(120))
        );
        assert_eq!(
            call(
                &mut s,
                "/api/v1/im.counters?roomId=alice-idbob-id&userId=bob-id",
                "alice"
            )
            .0,
            403
        );
        assert_eq!(call(&mut s, "/api/v1/nothing.here", "admin").0, 404);
        let get_room = "/api/v1/rooms.adminRooms.getRoom?rid=alice-idbob-id";
        let (st, b) = call(&mut s, get_room, "admin");
        assert_eq!(st, 200);
        assert_eq!(
            (
                &b["_id"],
                &b["t"],
                &b["uids"],
                &b["usernames"],
                &b["success"]
            ),
            (
                &json!("alice-idbob-id"),
                &json!("d"),
                &json!(["alice-id", "bob-id"]),
                &json!(["alice", "bob"]),
                &json!(true)
            )
        );
        assert!(b.get("lastMessage").is_none());
        let not_allowed =
            json!({"success": false, "error": "not-allowed", "errorType": "Not Allowed"});
        assert_eq!(call(&mut s, get_room, "alice"), (400, not_allowed.clone()));
        assert_eq!(
            call(&mut s, "/api/v1/rooms.adminRooms.getRoom?rid=nope", "admin"),
            (400, not_allowed)
        );
        assert_eq!(
            call(&mut s, "/api/v1/rooms.adminRooms.getRoom", "admin").1["errorType"],
            "invalid-params"
        );
        assert_eq!(call(&mut s, get_room, "").0, 401);
        assert_eq!(call(&mut s, "/api/v1/im.messages.others/", "").0, 401);
    }
}
