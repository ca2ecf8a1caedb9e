//! The upstream connections client connections keep (`local.rs`) while they sit idle are
//! taken back when the connection cap is reached: a connect that finds no free permit of
//! `upstream.max_connections` first closes one idle kept connection (freeing its permit), and
//! only waits when there is none. So idle client connections never starve the pool's users
//! (HTTP/2 clients, upgrades, the shim's own lookups) or newer client connections, and the
//! cap still bounds everything.
//!
//! Kept connections are listed once per client connection (a weak reference, pruned as they
//! die), not once per request: the hot path never touches this list.

use std::sync::{Mutex, PoisonError, Weak};

/// Something holding an upstream connection that can be closed when idle.
pub(super) trait Reclaim: Send + Sync {
    /// Closes its upstream connection if it is idle; `true` when it did.
    fn reclaim_idle(&self) -> bool;
}

/// The client connections that keep (or kept) an upstream connection.
#[derive(Default)]
pub(super) struct IdleRegistry {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    list: Vec<Weak<dyn Reclaim>>,
    /// The length at which dead entries are pruned next (amortised: doubles with the live).
    prune_at: usize,
}

impl IdleRegistry {
    /// Lists a client connection (once in its life).
    pub(super) fn register(&self, who: Weak<dyn Reclaim>) {
        let mut h = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if h.list.len() >= h.prune_at {
            h.list.retain(|w| w.strong_count() > 0);
            h.prune_at = (h.list.len() * 2).max(64);
        }
        h.list.push(who);
    }

    /// Closes one idle kept connection, if there is one; `true` when a permit was freed.
    /// Runs only at the cap; it stops at the first idle one and allocates nothing. (The lock
    /// order is this list, then a client connection's slot: nothing takes them the other way.)
    pub(super) fn reclaim_one(&self) -> bool {
        let h = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        h.list
            .iter()
            .filter_map(Weak::upgrade)
            .any(|who| who.reclaim_idle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Fake(AtomicBool);
    impl Reclaim for Fake {
        fn reclaim_idle(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    #[test]
    fn reclaims_an_idle_one_and_forgets_the_dead() {
        let reg = IdleRegistry::default();
        let busy: Arc<dyn Reclaim> = Arc::new(Fake(AtomicBool::new(false)));
        let idle: Arc<dyn Reclaim> = Arc::new(Fake(AtomicBool::new(true)));
        reg.register(Arc::downgrade(&busy));
        reg.register(Arc::downgrade(&idle));
        for _ in 0..100 {
            let gone: Arc<dyn Reclaim> = Arc::new(Fake(AtomicBool::new(true)));
            reg.register(Arc::downgrade(&gone));
        }
        assert!(reg.reclaim_one());
        assert!(!reg.reclaim_one(), "nothing idle is left");
        // The dead are pruned as new ones are listed.
        let last: Arc<dyn Reclaim> = Arc::new(Fake(AtomicBool::new(false)));
        reg.register(Arc::downgrade(&last));
        assert!(reg.held.lock().expect("lock").list.len() <= 66);
    }
}
