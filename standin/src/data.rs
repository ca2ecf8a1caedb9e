//! The stand-in's data: users, rooms, deterministic messages, settings and permissions,
//! the default seed, and the ISO-8601 date helpers the JSON documents use.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `_id`, e.g. `alice-id`.
    pub id: String,
    /// `username`, e.g. `alice`.
    pub username: String,
    /// Password accepted by `POST /api/v1/login`.
    pub password: String,
    /// The login token accepted in `X-Auth-Token` (and returned by login).
    pub token: String,
    /// Global roles, e.g. `["user", "admin"]`.
    pub roles: Vec<String>,
}

impl User {
    /// A user with the given fields (`roles` as string slices).
    pub fn new(id: &str, username: &str, password: &str, token: &str, roles: &[&str]) -> Self {
        User {
            id: id.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            token: token.to_string(),
            roles: roles.iter().map(|r| (*r).to_string()).collect(),
        }
    }

    /// The display name: the username with its first letter upper-cased.
    pub fn display_name(&self) -> String {
        let mut chars = self.username.chars();
        match chars.next() {
            Some(c) => c.to_uppercase().collect::<String>() + chars.as_str(),
            None => String::new(),
        }
    }
}

/// A room with a number of generated messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// `_id`, e.g. `alice-idbob-id` for a DM.
    pub id: String,
    /// `t`: `'d'` (direct message), `'c'` (channel) or `'p'` (private group).
    pub kind: char,
    /// Usernames of the members; messages alternate between them.
    pub usernames: Vec<String>,
    /// How many messages to generate.
    pub messages: usize,
}

impl Room {
    /// A room with the given fields.
    pub fn new(id: &str, kind: char, usernames: &[&str], messages: usize) -> Self {
        Room {
            id: id.to_string(),
            kind,
            usernames: usernames.iter().map(|u| (*u).to_string()).collect(),
            messages,
        }
    }
}

/// The initial content of a stand-in server.
#[derive(Debug, Clone)]
pub struct Seed {
    /// User accounts.
    pub users: Vec<User>,
    /// Rooms, in natural (insertion) order.
    pub rooms: Vec<Room>,
    /// Initial value of `API_Enable_Direct_Message_History_EndPoint`.
    pub dm_history_enabled: bool,
}

impl Default for Seed {
    /// admin/alice/bob/auditor, three DMs and `GENERAL`, DM history enabled.
    fn default() -> Self {
        Seed {
            users: vec![
                User::new(
                    "admin-id",
                    "admin",
                    "admin-pass",
                    "admin-token",
                    &["user", "admin"],
                ),
                User::new("alice-id", "alice", "alice-pass", "alice-token", &["user"]),
                User::new("bob-id", "bob", "bob-pass", "bob-token", &["user"]),
                User::new(
                    "auditor-id",
                    "auditor",
                    "auditor-pass",
                    "auditor-token",
                    &["user", "auditor"],
                ),
            ],
            rooms: vec![
                Room::new("alice-idbob-id", 'd', &["alice", "bob"], 120),
                Room::new("admin-idalice-id", 'd', &["admin", "alice"], 3),
                Room::new("alice-idauditor-id", 'd', &["alice", "auditor"], 0),
                Room::new("GENERAL", 'c', &["admin", "alice", "bob", "auditor"], 5),
            ],
            dm_history_enabled: true,
        }
    }
}

/// The OAuth bearer token every stand-in knows, mapped to `admin-id`.
pub const DEFAULT_BEARER_TOKEN: &str = "admin-oauth-token";

/// `2024-01-01T00:00:00.000Z` in Unix milliseconds: rooms are created then, message `n` is
/// sent `n` seconds later.
pub const BASE_MILLIS: i64 = 1_704_067_200_000;

/// Formats Unix milliseconds like JavaScript's `Date.prototype.toISOString`.
pub fn iso_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM]` into Unix milliseconds.
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if rest.is_empty() {
        return Some(ms);
    }
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let sign = if rest.as_bytes()[i] == b'-' { -1 } else { 1 };
        let mut op = rest[i + 1..].split(':');
        let oh = num(op.next()?)?;
        let om = op.next().map_or(Some(0), num)?;
        (&rest[..i], sign * (oh * 60 + om) * 60_000)
    } else {
        (rest, 0)
    };
    let mut tp = time.split(':');
    let h = num(tp.next()?)?;
    let mi = num(tp.next()?)?;
    let (sec, frac) = match tp.next() {
        None => (0, 0),
        Some(sf) => match sf.split_once('.') {
            None => (num(sf)?, 0),
            Some((s, f)) => {
                let f3: String = f.chars().chain("000".chars()).take(3).collect();
                (num(s)?, num(&f3)?)
            }
        },
    };
    if h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    ms += ((h * 60 + mi) * 60 + sec) * 1000 + frac - offset;
    Some(ms)
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A room and its generated messages.
#[derive(Debug, Clone)]
pub(crate) struct RoomData {
    pub room: Room,
    pub messages: Vec<Value>,
}

/// A permission and the roles holding it.
#[derive(Debug, Clone)]
pub(crate) struct Permission {
    pub id: String,
    pub roles: Vec<String>,
    pub updated_ms: i64,
}

/// Everything the Rocket.Chat endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub users: Vec<User>,
    pub rooms: Vec<RoomData>,
    pub settings: Map<String, Value>,
    pub permissions: Vec<Permission>,
    pub bearer: HashMap<String, String>,
    /// What `/api/info` reports as `version` (settable, so a test can play an older server).
    pub version: String,
}

/// Default permissions: `(id, roles)`.
const DEFAULT_PERMISSIONS: &[(&str, &[&str])] = &[
    ("view-room-administration", &["admin"]),
    ("view-privileged-setting", &["admin"]),
    ("edit-privileged-setting", &["admin"]),
    ("api-bypass-rate-limit", &["admin", "bot", "app"]),
    ("view-user-administration", &["admin"]),
    ("view-other-user-channels", &["admin"]),
    ("view-d-room", &["admin", "user", "bot", "app", "guest"]),
    ("create-d", &["admin", "user", "bot", "app"]),
    ("can-audit", &["admin", "auditor"]),
    ("view-full-other-user-info", &["admin"]),
];

impl State {
    /// Builds the state from a seed.
    pub fn from_seed(seed: Seed) -> State {
        let mut settings = Map::new();
        settings.insert(
            "API_Enable_Direct_Message_History_EndPoint".into(),
            Value::Bool(seed.dm_history_enabled),
        );
        settings.insert("API_Default_Count".into(), json!(50));
        settings.insert("API_Upper_Count_Limit".into(), json!(100));
        settings.insert("API_Allow_Infinite_Count".into(), json!(true));
        settings.insert("API_Enable_Rate_Limiter".into(), json!(true));
        settings.insert(
            "API_Enable_Rate_Limiter_Limit_Calls_Default".into(),
            json!(10),
        );
        settings.insert(
            "API_Enable_Rate_Limiter_Limit_Time_Default".into(),
            json!(60000),
        );
        settings.insert("Site_Name".into(), json!("Rocket.Chat"));
        let permissions = DEFAULT_PERMISSIONS
            .iter()
            .map(|(id, roles)| Permission {
                id: (*id).to_string(),
                roles: roles.iter().map(|r| (*r).to_string()).collect(),
                updated_ms: BASE_MILLIS,
            })
            .collect();
        let mut state = State {
            users: seed.users,
            rooms: Vec::new(),
            settings,
            permissions,
            bearer: HashMap::from([(DEFAULT_BEARER_TOKEN.to_string(), "admin-id".to_string())]),
            version: crate::api::VERSION.to_string(),
        };
        for room in seed.rooms {
            let messages = state.generate_messages(&room);
            state.rooms.push(RoomData { room, messages });
        }
        state
    }

    /// Adds or replaces a user.
    pub fn add_user(&mut self, user: User) {
        match self.users.iter_mut().find(|u| u.id == user.id) {
            Some(existing) => *existing = user,
            None => self.users.push(user),
        }
    }

    /// The user with this `_id`.
    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The roles holding `permission` (empty if unknown).
    pub fn permission_roles(&self, permission: &str) -> &[String] {
        self.permissions
            .iter()
            .find(|p| p.id == permission)
            .map_or(&[], |p| p.roles.as_slice())
    }

    /// Global permission check: does any of the user's roles hold the permission?
    pub fn has_permission(&self, user: &User, permission: &str) -> bool {
        let roles = self.permission_roles(permission);
        user.roles.iter().any(|r| roles.contains(r))
    }

    /// Replaces the roles of a permission (creating it if needed) and bumps `_updatedAt`.
    pub fn set_permission_roles(&mut self, permission: &str, roles: Vec<String>) {
        let now = now_millis();
        match self.permissions.iter_mut().find(|p| p.id == permission) {
            Some(p) => {
                p.roles = roles;
                p.updated_ms = now;
            }
            None => self.permissions.push(Permission {
                id: permission.to_string(),
                roles,
                updated_ms: now,
            }),
        }
    }

    fn generate_messages(&self, room: &Room) -> Vec<Value> {
        (1..=room.messages)
            .map(|n| {
                let username = if room.usernames.is_empty() {
                    "rocket.cat".to_string()
                } else {
                    room.usernames[(n - 1) % room.usernames.len()].clone()
                };
                let (uid, name) = match self.users.iter().find(|u| u.username == username) {
                    Some(u) => (u.id.clone(), u.display_name()),
                    None => (format!("{username}-id"), username.clone()),
                };
                let ts = iso_from_millis(BASE_MILLIS + (n as i64) * 1000);
                json!({
                    "_id": format!("{}-m{n}", room.id),
                    "rid": room.id,
                    "msg": format!("message {n} in {}", room.id),
                    "ts": ts,
                    "u": {"_id": uid, "username": username, "name": name},
                    "_updatedAt": ts,
                    "urls": [],
                    "mentions": [],
                    "channels": [],
                })
            })
            .collect()
    }

    /// The user document `/api/v1/me` returns (without `success`).
    pub fn me_doc(user: &User) -> Value {
        let email = format!("{}@example.com", user.username);
        json!({
            "_id": user.id,
            "username": user.username,
            "name": user.display_name(),
            "emails": [{"address": email, "verified": true}],
            "status": "online",
            "statusConnection": "online",
            "utcOffset": 0,
            "active": true,
            "roles": user.roles,
            "settings": {"profile": {}, "preferences": {}},
            "email": email,
        })
    }

    /// The room document, with `lastMessage` like `composeRoomWithLastMessage`.
    pub fn room_doc(&self, rd: &RoomData) -> Value {
        let r = &rd.room;
        let created = iso_from_millis(BASE_MILLIS);
        let last = rd.messages.last();
        let updated = last
            .and_then(|m| m.get("ts"))
            .cloned()
            .unwrap_or_else(|| Value::String(created.clone()));
        let mut m = Map::new();
        m.insert("_id".into(), json!(r.id));
        m.insert("t".into(), json!(r.kind.to_string()));
        if r.kind != 'd' {
            m.insert("name".into(), json!(r.id.to_lowercase()));
            m.insert("fname".into(), json!(r.id.to_lowercase()));
        }
        m.insert("usernames".into(), json!(r.usernames));
        if r.kind == 'd' {
            let uids: Vec<String> = r
                .usernames
                .iter()
                .map(|un| {
                    self.users
                        .iter()
                        .find(|u| &u.username == un)
                        .map_or_else(|| format!("{un}-id"), |u| u.id.clone())
                })
                .collect();
            m.insert("uids".into(), json!(uids));
        }
        m.insert("usersCount".into(), json!(r.usernames.len()));
        m.insert("msgs".into(), json!(rd.messages.len()));
        m.insert("ts".into(), json!(created));
        m.insert("_updatedAt".into(), updated.clone());
        m.insert("default".into(), json!(r.id == "GENERAL"));
        m.insert("ro".into(), json!(false));
        m.insert("sysMes".into(), json!(true));
        if let Some(last) = last {
            m.insert("lm".into(), updated);
            m.insert("lastMessage".into(), last.clone());
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        assert_eq!(iso_from_millis(BASE_MILLIS), "2024-01-01T00:00:00.000Z");
        assert_eq!(
            iso_from_millis(BASE_MILLIS + 61_001),
            "2024-01-01T00:01:01.001Z"
        );
        assert_eq!(iso_from_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_iso("2024-01-01T00:01:01.001Z"),
            Some(BASE_MILLIS + 61_001)
        );
        assert_eq!(parse_iso("2024-01-01"), Some(BASE_MILLIS));
        assert_eq!(parse_iso("2024-01-01T01:00:00+01:00"), Some(BASE_MILLIS));
        assert_eq!(parse_iso("yesterday"), None);
    }

    #[test]
    fn default_seed_messages() {
        let s = State::from_seed(Seed::default());
        let dm = &s.rooms[0];
        assert_eq!(dm.messages.len(), 120);
        assert_eq!(dm.messages[0]["_id"], "alice-idbob-id-m1");
        assert_eq!(dm.messages[0]["u"]["username"], "alice");
        assert_eq!(dm.messages[1]["u"]["_id"], "bob-id");
        assert_eq!(dm.messages[119]["ts"], "2024-01-01T00:02:00.000Z");
        assert!(s.has_permission(s.user("admin-id").unwrap(), "view-room-administration"));
        assert!(!s.has_permission(s.user("alice-id").unwrap(), "view-room-administration"));
    }
}
