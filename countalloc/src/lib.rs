//! A global allocator that counts allocation calls and passes them to the system allocator,
//! for the benchmarks' "allocations per request" figure (`bench/run.sh` builds the shim with
//! the `count-allocations` feature and reads `rcshim_allocations_total` from `/metrics` before
//! and after a measured run). Its own crate so that the shim's crates keep
//! `#![forbid(unsafe_code)]`: implementing `GlobalAlloc` takes `unsafe`.
//!
//! Counted: `alloc`, `alloc_zeroed` and `realloc` (each asks the allocator for memory;
//! `dealloc` is not counted). One relaxed atomic add per call: measurable only in a bench build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

/// The counting allocator; register it with `#[global_allocator]`.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract; the only
// addition is a counter update, which neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// How many allocation calls the process made so far (0 unless [`Counting`] is registered).
pub fn allocations() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: Counting = Counting;

    #[test]
    fn counts_each_allocation_call() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(64);
        let b = Box::new(7u64);
        let after = allocations();
        assert!(after - before >= 2, "{before} -> {after}");
        drop((v, b));
    }
}
