//! The members of a room, for the audit record's `room.members` (spec/shim.md 9.3): read from
//! the upstream's `GET /api/v1/rooms.adminRooms.getRoom?rid=<roomId>` (Rocket.Chat 2.4+; its
//! `uids` and `usernames` are parallel lists) with the caller's own credential, since it needs
//! `view-room-administration`, which the caller has just been found to hold.
//!
//! Cached per room for `policy.members_ttl` (a DM's members do not change; a multi-user DM's rarely),
//! and concurrent first lookups of one room share one upstream call. Failures are not cached:
//! the caller decides what a failed lookup means (for the record alone, `members: null`; with
//! a protected list set, the request is refused: see `DmHistory::protected_check`).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use moka::future::Cache;
use serde_json::Value;

use crate::audit::Person;
use crate::dm_history::credential::Credential;
use crate::dm_history::lookup::{self, LookupError};
use crate::dm_history::params::encode_component;
use crate::request::RequestCtx;
use crate::upstream::Upstream;

/// The default of `policy.members_ttl`.
pub const MEMBERS_TTL: Duration = Duration::from_secs(60);
/// Rooms whose members are held at most (a few hundred bytes each).
const MAX_ROOMS: u64 = 50_000;
/// The lookup's name in errors and logs.
const WHAT: &str = "/api/v1/rooms.adminRooms.getRoom";

/// Rooms' members, cached.
pub struct Members {
    cache: Cache<String, Arc<Vec<Person>>>,
}

impl Default for Members {
    fn default() -> Self {
        Members::new(MEMBERS_TTL)
    }
}

impl Members {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Members {
        Members {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(MAX_ROOMS)
                .build(),
        }
    }

    /// The members of `room_id`: from the cache, or by one upstream call shared by every
    /// concurrent first lookup of that room, made with `cred`.
    pub async fn get(
        &self,
        room_id: &str,
        upstream: &Upstream,
        cred: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Result<Arc<Vec<Person>>, LookupError> {
        if let Some(m) = self.cache.get(room_id).await {
            return Ok(m);
        }
        self.cache
            .try_get_with(room_id.to_owned(), fetch(room_id, upstream, cred, ctx))
            .await
            .map_err(|e| e.as_ref().clone())
    }

    /// Rooms held now.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

async fn fetch(
    room_id: &str,
    upstream: &Upstream,
    cred: &Credential<'_>,
    ctx: &RequestCtx,
) -> Result<Arc<Vec<Person>>, LookupError> {
    let path = format!("{WHAT}?rid={}", encode_component(room_id));
    let (status, body) = lookup::get_json(upstream, &path, WHAT, cred, ctx).await?;
    if status != StatusCode::OK {
        return Err(LookupError::Status(status, WHAT));
    }
    members_of(&body).map(Arc::new)
}

/// `uids[i]` with `usernames[i]`; the two lists must be arrays of strings of one length.
fn members_of(body: &Value) -> Result<Vec<Person>, LookupError> {
    let list = |key: &str| -> Result<Vec<String>, LookupError> {
        body.get(key)
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| LookupError::Shape(WHAT, format!("no \"{key}\" list of strings")))
    };
    let (uids, usernames) = (list("uids")?, list("usernames")?);
    if uids.len() != usernames.len() {
        return Err(LookupError::Shape(
            WHAT,
            format!("{} uids but {} usernames", uids.len(), usernames.len()),
        ));
    }
    Ok(uids
        .into_iter()
        .zip(usernames)
        .map(|(id, username)| Person { id, username })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parallel_lists_make_the_members() {
        let m = members_of(&json!({"_id": "r", "uids": ["a-id", "b-id"], "usernames": ["a", "b"], "success": true}))
            .expect("members");
        assert_eq!(
            m,
            vec![
                Person {
                    id: "a-id".into(),
                    username: "a".into()
                },
                Person {
                    id: "b-id".into(),
                    username: "b".into()
                },
            ]
        );
    }

    #[test]
    fn other_shapes_are_errors() {
        for body in [
            json!({"usernames": ["a"]}),
            json!({"uids": ["a-id"], "usernames": ["a", "b"]}),
            json!({"uids": [1], "usernames": ["a"]}),
            json!(null),
        ] {
            assert!(
                matches!(members_of(&body), Err(LookupError::Shape(..))),
                "{body}"
            );
        }
    }
}
