//! No mass reading (spec/shim.md 9.4): the distinct rooms each actor read within a sliding
//! `policy.max_rooms_per_actor.per`, at most `rooms` of them.
//!
//! A room is taken into the window when its read is admitted (check and add in one step, so
//! concurrent requests cannot read N + 1 rooms between a check and an add) and given back when
//! the answer is not a 200 (a read is a 200 answer). Rereading a room in the window only
//! refreshes its time. Kept in this process ([`LocalWindows`]) or, with
//! `rate_limit.backend = "redis"`, in one sorted set per actor shared by every replica
//! (`rooms.lua`, run by [`crate::ratelimit::redis::RedisLimiter::rooms`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::RoomsWindow;

/// Actors whose windows are held at most (a window is a few rooms; actors are the few users
/// holding the permission, so this bound is never near in practice).
const MAX_ACTORS: u64 = 100_000;

/// What admitting one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The room is in the window now; `new` when it was not before (so a failed read gives
    /// it back).
    Allowed { new: bool },
    /// The window is full: the read waits until the oldest room falls out.
    Refused { wait: Duration },
}

/// One actor's window: (room, last read) pairs, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    reads: VecDeque<(String, Instant)>,
}

impl Window {
    /// Admits a read of `room` at `now` against `limit`: the pure rule, unit-tested below.
    pub fn admit(&mut self, room: &str, now: Instant, limit: &RoomsWindow) -> Admit {
        self.reads
            .retain(|(_, at)| now.saturating_duration_since(*at) < limit.per);
        if let Some(pos) = self.reads.iter().position(|(r, _)| r == room) {
            self.reads.remove(pos);
            self.reads.push_back((room.to_owned(), now));
            return Admit::Allowed { new: false };
        }
        if self.reads.len() < limit.rooms as usize {
            self.reads.push_back((room.to_owned(), now));
            return Admit::Allowed { new: true };
        }
        let oldest = self.reads.front().map(|(_, at)| *at).unwrap_or(now);
        Admit::Refused {
            wait: (oldest + limit.per).saturating_duration_since(now),
        }
    }

    /// Gives back a room taken by a read that did not end in a 200.
    pub fn give_back(&mut self, room: &str) {
        self.reads.retain(|(r, _)| r != room);
    }
}

/// Every actor's window in this process; an actor idle for `per` has an empty window, so it is
/// forgotten then.
pub struct LocalWindows {
    limit: RoomsWindow,
    windows: Cache<String, Arc<Mutex<Window>>>,
}

impl LocalWindows {
    /// Empty windows for `limit`.
    pub fn new(limit: RoomsWindow) -> Self {
        LocalWindows {
            windows: Cache::builder()
                .time_to_idle(limit.per)
                .max_capacity(MAX_ACTORS)
                .build(),
            limit,
        }
    }

    /// The setting these windows count against.
    pub fn limit(&self) -> &RoomsWindow {
        &self.limit
    }

    /// Admits a read of `room` by `actor` now.
    pub fn admit(&self, actor: &str, room: &str) -> Admit {
        let w = self.windows.get_with(actor.to_owned(), Default::default);
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        w.admit(room, Instant::now(), &self.limit)
    }

    /// Gives back `room` to `actor`'s window.
    pub fn give_back(&self, actor: &str, room: &str) {
        if let Some(w) = self.windows.get(actor) {
            w.lock().unwrap_or_else(|p| p.into_inner()).give_back(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rooms: u32, secs: u64) -> RoomsWindow {
        RoomsWindow {
            rooms,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn distinct_rooms_in_a_sliding_window() {
        let l = limit(2, 60);
        let t0 = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.admit("a", t0, &l), Admit::Allowed { new: true });
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(w.admit("b", t10, &l), Admit::Allowed { new: true });
        // Rereading is free.
        assert_eq!(w.admit("a", t10, &l), Admit::Allowed { new: false });
        assert_eq!(w.admit("b", t10, &l), Admit::Allowed { new: false });
        // A third room waits until the oldest (b at t10; a was reread at t10 too) falls out.
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(
            w.admit("c", t20, &l),
            Admit::Refused {
                wait: Duration::from_secs(50)
            }
        );
        // Once the window slid past them, c is admitted.
        let t70 = t0 + Duration::from_secs(70);
        assert_eq!(w.admit("c", t70, &l), Admit::Allowed { new: true });
    }

    #[test]
    fn a_failed_read_gives_its_room_back() {
        let l = limit(1, 60);
        let t0 = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.admit("a", t0, &l), Admit::Allowed { new: true });
        w.give_back("a");
        assert_eq!(w.admit("b", t0, &l), Admit::Allowed { new: true });
        assert!(matches!(w.admit("a", t0, &l), Admit::Refused { .. }));
    }

    #[test]
    fn actors_have_their_own_windows() {
        let w = LocalWindows::new(limit(1, 60));
        assert_eq!(w.admit("x", "a"), Admit::Allowed { new: true });
        assert!(matches!(w.admit("x", "b"), Admit::Refused { .. }));
        assert_eq!(w.admit("y", "b"), Admit::Allowed { new: true });
    }
}
