//! Pins the allocation cost of the endpoint's two fast roads (issue 15): a cache hit (identity
//! cached, policy checked, both budgets spent) and a per-IP 429 allocate at most
//! [`MAX_PER_ANSWER`] times each, counted by the counting allocator of the bench builds
//! (`countalloc`) over a run of answers on one keep-alive connection, in this process.
//!
//! Allocation counts are exact, unlike timings, so this is a test and not a benchmark. The
//! client runs on a plain thread with one fixed buffer and allocates nothing per request, so
//! the count is the shim's (the stand-in is not asked on a hit or a refusal). The runs are
//! warmed first: the cache entry, the cached identity, the header-value tables and hyper's
//! recycled header map are made once, not per answer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rocketchat_shim::config::{Budget, RolesSource};

#[global_allocator]
static COUNTING: countalloc::Counting = countalloc::Counting;

/// The bound for a cache hit, and the one held for a refusal.
const MAX_PER_ANSWER: f64 = 10.0;
/// Answers counted per run (after as many for warming).
const ANSWERS: usize = 2000;

const REQUEST: &[u8] = b"GET /api/v1/im.messages.others?roomId=alice-idbob-id HTTP/1.1\r\n\
Host: 127.0.0.1\r\nX-User-Id: admin-id\r\nX-Auth-Token: admin-token\r\n\r\n";

/// Sends `n` requests on one connection, one at a time; returns how many answered `status`.
fn send(conn: &mut TcpStream, buf: &mut [u8], n: usize, status: &[u8]) -> usize {
    let mut matched = 0;
    for _ in 0..n {
        conn.write_all(REQUEST).expect("write");
        let mut have = 0;
        let head_end = loop {
            let got = conn.read(&mut buf[have..]).expect("read");
            assert!(got > 0, "the shim closed the connection");
            have += got;
            if let Some(at) = find(&buf[..have], b"\r\n\r\n") {
                break at + 4;
            }
        };
        let length = content_length(&buf[..head_end]).expect("content-length");
        while have < head_end + length {
            let got = conn.read(&mut buf[have..]).expect("read");
            assert!(got > 0, "the shim closed the connection");
            have += got;
        }
        if buf[..have].starts_with(status) {
            matched += 1;
        }
    }
    matched
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `content-length` of a response head (hyper writes it in lower case).
fn content_length(head: &[u8]) -> Option<usize> {
    let at = find(head, b"content-length: ")? + b"content-length: ".len();
    let mut n = 0usize;
    for &b in head[at..].iter().take_while(|b| b.is_ascii_digit()) {
        n = n * 10 + usize::from(b - b'0');
    }
    Some(n)
}

/// Allocations per answer over [`ANSWERS`] answers after as many for warming, each of which
/// must start with `status`.
async fn allocations_per_answer(addr: SocketAddr, status: &'static [u8]) -> f64 {
    tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(send(&mut conn, &mut buf, ANSWERS, status), ANSWERS);
        let before = countalloc::allocations();
        let matched = send(&mut conn, &mut buf, ANSWERS, status);
        let after = countalloc::allocations();
        assert_eq!(matched, ANSWERS);
        (after - before) as f64 / ANSWERS as f64
    })
    .await
    .expect("client thread")
}

fn configure(c: &mut rocketchat_shim::config::Config, per_ip: Budget) {
    c.policy.roles = RolesSource::List(vec!["admin".into()]);
    c.policy.identity_ttl = Duration::from_secs(600);
    c.cache.enabled = true;
    c.cache.ttl = Duration::from_secs(60);
    c.rate_limit.enabled = true;
    c.rate_limit.per_user = Budget {
        requests: 1_000_000_000,
        per: Duration::from_secs(1),
    };
    c.rate_limit.per_ip = per_ip;
}

/// One test for both roads: the counter is the process's, so nothing else may run while a
/// road is counted (the tests of one binary run in parallel).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_cache_hit_and_a_per_ip_refusal_allocate_at_most_ten_times_each() {
    let hits = common::start(|c| {
        configure(
            c,
            Budget {
                requests: 1_000_000_000,
                per: Duration::from_secs(1),
            },
        )
    })
    .await;
    let per_hit = allocations_per_answer(hits.shim.addr, b"HTTP/1.1 200 ").await;
    drop(hits);

    let refusals = common::start(|c| {
        configure(
            c,
            Budget {
                requests: 1,
                per: Duration::from_secs(60),
            },
        )
    })
    .await;
    // The first request spends the budget; every one after it is refused.
    let addr = refusals.shim.addr;
    let first = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        send(&mut conn, &mut [0u8; 1 << 16], 1, b"HTTP/1.1 200 ")
    })
    .await
    .expect("client thread");
    assert_eq!(first, 1);
    let per_refusal = allocations_per_answer(addr, b"HTTP/1.1 429 ").await;

    assert!(
        per_hit <= MAX_PER_ANSWER,
        "{per_hit:.2} allocations per cache hit (bound {MAX_PER_ANSWER})"
    );
    assert!(
        per_refusal <= MAX_PER_ANSWER,
        "{per_refusal:.2} allocations per per-IP 429 (bound {MAX_PER_ANSWER})"
    );
}
