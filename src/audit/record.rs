//! One audit record: the fields of spec/shim.md 9.1, in that order, and its JSON line.
//!
//! The pipeline fills an [`Event`] (what happened); the writer adds `seq`, `ts`, `instance`
//! and `prev` when it puts the event on the chain, so that `seq` and `prev` follow the order
//! of the file. Nothing in these types can hold a token, a cookie or a message text: the
//! only free-form values are `query` (the canonical parameters, credential-free by
//! construction of the params step) and `reason` (the `X-Audit-Reason` header).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::answer::{error_code, messages_digest};

/// A user as a record names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub username: String,
}

/// The room a request named, with its members as far as known (`None`: not known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: String,
    pub members: Option<Vec<Person>>,
}

/// The canonical name of the endpoint answered (`dm.` calls are recorded under `im.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "im.messages.others")]
    MessagesOthers,
    #[serde(rename = "im.list.everyone")]
    ListEveryone,
    #[serde(rename = "im.counters")]
    Counters,
}

/// The alias the client called: `im.` or `dm.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alias {
    Im,
    Dm,
}

/// `"refuse"`: the shim answered with its own error; `"allow"`: the answer came from the
/// upstream or the cache, whatever its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Refuse,
}

/// Where the answer came from, as far as the cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    Hit,
    Miss,
    Collapsed,
    Refresh,
    Disabled,
    /// The answer was decided before the cache.
    Bypass,
}

impl CacheStatus {
    /// From the cache's access-log label (`hit`, `miss`, `collapsed`, `refresh`, `disabled`,
    /// `bypass`), so the pipeline can pass `cache::Outcome::label()` without this module
    /// depending on the cache.
    pub fn from_label(label: &str) -> Option<CacheStatus> {
        Some(match label {
            "hit" => CacheStatus::Hit,
            "miss" => CacheStatus::Miss,
            "collapsed" => CacheStatus::Collapsed,
            "refresh" => CacheStatus::Refresh,
            "disabled" => CacheStatus::Disabled,
            "bypass" => CacheStatus::Bypass,
            _ => return None,
        })
    }
}

/// What the pipeline knows about one answer: every field of a record but the four the
/// writer adds (`seq`, `ts`, `instance`, `prev`). Field order is the record's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub request_id: String,
    pub client_ip: IpAddr,
    /// `None` until the caller is identified.
    pub actor: Option<Person>,
    pub endpoint: Endpoint,
    pub alias: Alias,
    /// `None` when the request named no room.
    pub room: Option<Room>,
    /// The canonical parameters as a JSON object (`offset`/`count` numbers, `sort`/`query`/
    /// `fields` parsed objects); `None` when refused before the parameters were read.
    pub query: Option<serde_json::Value>,
    /// The `X-Audit-Reason` value.
    pub reason: Option<String>,
    pub decision: Decision,
    /// The HTTP status sent.
    pub status: u16,
    /// For a non-2xx answer, its error id (see [`error_code`]); `None` on a 2xx.
    pub error: Option<String>,
    /// How many messages the answer's `messages` array held; `None` without such an array.
    pub messages: Option<u64>,
    /// Hex SHA-256 of those messages' `_id`s joined by `\n`.
    pub message_ids_sha256: Option<String>,
    pub cache: CacheStatus,
    /// This request crossed `policy.max_rooms_per_actor`.
    pub alert: bool,
}

impl Event {
    /// An event with nothing known yet but the request: a refusal with status 0, no actor,
    /// room or parameters, cache `bypass`. The pipeline fills in what it learns.
    pub fn new(
        request_id: impl Into<String>,
        client_ip: IpAddr,
        endpoint: Endpoint,
        alias: Alias,
    ) -> Event {
        Event {
            request_id: request_id.into(),
            client_ip,
            actor: None,
            endpoint,
            alias,
            room: None,
            query: None,
            reason: None,
            decision: Decision::Refuse,
            status: 0,
            error: None,
            messages: None,
            message_ids_sha256: None,
            cache: CacheStatus::Bypass,
            alert: false,
        }
    }

    /// Records the answer the client receives: its decision, status, error id and, from the
    /// exact body sent (also on a cache hit), the message count and id digest.
    pub fn set_answer(&mut self, decision: Decision, status: u16, body: &[u8]) {
        self.decision = decision;
        self.status = status;
        self.error = error_code(status, body);
        match messages_digest(body) {
            Some(d) => {
                self.messages = Some(d.count);
                self.message_ids_sha256 = Some(d.ids_sha256);
            }
            None => {
                self.messages = None;
                self.message_ids_sha256 = None;
            }
        }
    }
}

/// A record as read back from a file (tests, tools). The writer serialises the same shape
/// from borrowed parts (see [`Line`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub instance: String,
    #[serde(flatten)]
    pub event: Event,
    pub prev: String,
}

impl Record {
    /// Parses one line (without its `\n`).
    pub fn parse(line: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

/// The two fields that make the chain, read from a line without parsing the rest into
/// types: what `verify` and start-up continuation look at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChainFields {
    pub seq: u64,
    pub prev: String,
}

impl ChainFields {
    /// `Some` when `line` is a JSON object with an integer `seq` and a string `prev`: a
    /// record as far as the chain is concerned. Anything else (a torn line above all) is not.
    pub fn parse(line: &[u8]) -> Option<ChainFields> {
        // serde would also accept a JSON array for a struct; a record is an object.
        if line.first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(line).ok()
    }
}

/// The line the writer puts on the chain: [`Record`]'s shape, borrowing the event.
#[derive(Serialize)]
pub(super) struct Line<'a> {
    pub seq: u64,
    pub ts: &'a str,
    pub instance: &'a str,
    #[serde(flatten)]
    pub event: &'a Event,
    pub prev: &'a str,
}

impl Line<'_> {
    /// The line's bytes, without the `\n`. serde_json escapes every control character, so a
    /// line never contains a raw `\n`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new(
            "req-1",
            IpAddr::from([127, 0, 0, 1]),
            Endpoint::MessagesOthers,
            Alias::Dm,
        );
        e.actor = Some(Person {
            id: "u1".into(),
            username: "admin".into(),
        });
        e.room = Some(Room {
            id: "r1".into(),
            members: Some(vec![Person {
                id: "u2".into(),
                username: "alice\nbob".into(),
            }]),
        });
        e.query = Some(serde_json::json!({"offset": 0, "count": 2, "sort": {"ts": -1}}));
        e.reason = Some("INC-1".into());
        e.cache = CacheStatus::Miss;
        e.set_answer(
            Decision::Allow,
            200,
            br#"{"messages":[{"_id":"a","msg":"x"},{"_id":"b"}],"success":true}"#,
        );
        e
    }

    #[test]
    fn the_line_has_the_fields_of_9_1_in_order() {
        let e = sample();
        let bytes = Line {
            seq: 7,
            ts: "2026-12-01T20:58:58.123Z",
            instance: "h",
            event: &e,
            prev: super::super::GENESIS,
        }
        .to_bytes()
        .expect("serialises");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(!text.contains('\n'));
        assert_eq!(
            text,
            concat!(
                r#"{"seq":7,"ts":"2026-12-01T20:58:58.123Z","instance":"h","request_id":"req-1","client_ip":"127.0.0.1","#,
                r#""actor":{"id":"u1","username":"admin"},"endpoint":"im.messages.others","alias":"dm","#,
                r#""room":{"id":"r1","members":[{"id":"u2","username":"alice\nbob"}]},"#,
                r#""query":{"offset":0,"count":2,"sort":{"ts":-1}},"reason":"INC-1","decision":"allow","status":200,"#,
                r#""error":null,"messages":2,"message_ids_sha256":"#,
                r#""7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78","#,
                r#""cache":"miss","alert":false,"prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#
            )
        );
        let back = Record::parse(text.as_bytes()).expect("parses back");
        assert_eq!(back.event, e);
        assert_eq!(back.seq, 7);
        assert_eq!(serde_json::to_string(&back).expect("serialises"), text);
    }

    #[test]
    fn cache_labels_round_trip() {
        for c in [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Collapsed,
            CacheStatus::Refresh,
            CacheStatus::Disabled,
            CacheStatus::Bypass,
        ] {
            let label = serde_json::to_value(c).expect("serialises");
            assert_eq!(
                CacheStatus::from_label(label.as_str().expect("a string")),
                Some(c)
            );
        }
        assert_eq!(CacheStatus::from_label("stale"), None);
    }

    #[test]
    fn a_new_event_is_an_empty_refusal() {
        let mut e = Event::new(
            "r",
            IpAddr::from([10, 0, 0, 1]),
            Endpoint::Counters,
            Alias::Im,
        );
        e.set_answer(
            Decision::Refuse,
            401,
            br#"{"status":"error","message":"You must be logged in to do this."}"#,
        );
        assert_eq!(e.error.as_deref(), Some("not-logged-in"));
        assert_eq!(e.messages, None);
        assert_eq!(e.message_ids_sha256, None);
        assert_eq!(e.cache, CacheStatus::Bypass);
    }
}
