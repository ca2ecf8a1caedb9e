//! `audit report`: who read which conversations. One row per (actor, room) with the room's
//! members, allowed and refused requests, messages returned, and first and last time;
//! `--user` keeps the rows where that user is the actor or a member ("who read my DMs?").
//!
//! The report reads records loosely (a line that is not a record is skipped): checking the
//! chain is `verify`'s job.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::clock;
use super::record::Person;
use super::verify::ReadError;

/// One (actor, room) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `None`: requests refused before the caller was identified.
    pub actor: Option<Person>,
    /// `None`: requests that named no room (`im.list.everyone`, early refusals).
    pub room: Option<String>,
    /// The room's members as last recorded; `None` when never known.
    pub members: Option<Vec<Person>>,
    pub allowed: u64,
    pub refused: u64,
    /// Messages returned, summed over the allowed answers.
    pub messages: u64,
    pub first: String,
    pub last: String,
}

impl Row {
    /// Whether `user` (an id or a username) is the actor or a member.
    pub fn concerns(&self, user: &str) -> bool {
        let is = |p: &Person| p.id == user || p.username == user;
        self.actor.as_ref().is_some_and(is) || self.members.iter().flatten().any(is)
    }
}

/// Reads `files` in order and builds the rows, in order of first appearance; records older
/// than `since` are left out, and with `user` only the rows concerning that user are kept.
pub fn build(
    files: &[impl AsRef<Path>],
    user: Option<&str>,
    since: Option<OffsetDateTime>,
) -> Result<Vec<Row>, ReadError> {
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<(Option<String>, Option<String>), usize> = HashMap::new();
    for path in files {
        let path = path.as_ref();
        let err = |source: io::Error| ReadError {
            file: path.display().to_string(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(err)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(err)? == 0 {
                break;
            }
            let Ok(Value::Object(r)) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let Some(ts) = r.get("ts").and_then(Value::as_str) else {
                continue;
            };
            if let Some(since) = since {
                match clock::parse_rfc3339(ts) {
                    Some(t) if t >= since => {}
                    _ => continue,
                }
            }
            let actor = r.get("actor").and_then(person);
            let room = r.get("room").and_then(Value::as_object);
            let room_id = room
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let members = room
                .and_then(|o| o.get("members"))
                .and_then(Value::as_array)
                .map(|m| m.iter().filter_map(person).collect::<Vec<_>>());
            let key = (actor.as_ref().map(|a| a.id.clone()), room_id.clone());
            let i = *index.entry(key).or_insert_with(|| {
                rows.push(Row {
                    actor: actor.clone(),
                    room: room_id,
                    members: None,
                    allowed: 0,
                    refused: 0,
                    messages: 0,
                    first: ts.to_owned(),
                    last: ts.to_owned(),
                });
                rows.len() - 1
            });
            let row = &mut rows[i];
            if actor.is_some() {
                row.actor = actor;
            }
            if members.is_some() {
                row.members = members;
            }
            match r.get("decision").and_then(Value::as_str) {
                Some("allow") => {
                    row.allowed += 1;
                    row.messages += r.get("messages").and_then(Value::as_u64).unwrap_or(0);
                }
                _ => row.refused += 1,
            }
            row.last = ts.to_owned();
        }
    }
    if let Some(user) = user {
        rows.retain(|r| r.concerns(user));
    }
    Ok(rows)
}

fn person(v: &Value) -> Option<Person> {
    let o = v.as_object()?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some(Person {
        id: s("id"),
        username: s("username"),
    })
}

/// The rows as one JSON array.
pub fn to_json(rows: &[Row]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

/// The rows as a plain-text table with a header line.
pub fn to_table(rows: &[Row]) -> String {
    let name = |p: &Person| {
        if p.username.is_empty() {
            p.id.clone()
        } else {
            p.username.clone()
        }
    };
    let header = [
        "ACTOR", "ROOM", "MEMBERS", "ALLOWED", "REFUSED", "MESSAGES", "FIRST", "LAST",
    ]
    .map(String::from);
    let mut table = vec![header];
    for r in rows {
        table.push([
            r.actor
                .as_ref()
                .map_or_else(|| "-".into(), |a| format!("{} ({})", name(a), a.id)),
            r.room.clone().unwrap_or_else(|| "-".into()),
            r.members.as_ref().map_or_else(
                || "-".into(),
                |m| m.iter().map(name).collect::<Vec<_>>().join(","),
            ),
            r.allowed.to_string(),
            r.refused.to_string(),
            r.messages.to_string(),
            r.first.clone(),
            r.last.clone(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up() {
        let rows = vec![Row {
            actor: Some(Person {
                id: "u1".into(),
                username: "admin".into(),
            }),
            room: Some("r1".into()),
            members: Some(vec![
                Person {
                    id: "u2".into(),
                    username: "alice".into(),
                },
                Person {
                    id: "u3".into(),
                    username: "".into(),
                },
            ]),
            allowed: 2,
            refused: 1,
            messages: 7,
            first: "2026-12-01T20:58:58.123Z".into(),
            last: "2026-12-01T21:00:00.000Z".into(),
        }];
        assert!(
            rows[0].concerns("alice")
                && rows[0].concerns("u1")
                && rows[0].concerns("u3")
                && !rows[0].concerns("bob")
        );
        assert_eq!(
            to_table(&rows),
            "ACTOR       ROOM  MEMBERS   ALLOWED  REFUSED  MESSAGES  FIRST                     LAST\n\
             admin (u1)  r1    alice,u3  2        1        7         2026-12-01T20:58:58.123Z  2026-12-01T21:00:00.000Z\n"
        );
    }
}
