//! How fast the audit trail's writer puts records on disk: records per second, write
//! batches (group commits) and fdatasync latency, with `fsync = "always"` and `"never"`, for
//! a few numbers of concurrent writers. Not a test: a measurement for the README.
//!
//! ```text
//! cargo run --release --example audit_throughput -- [--records 20000] [--dir DIR]
//! ```
//!
//! `DIR` (default: the system temp dir) should be on the disk the trail will live on:
//! fdatasync latency is the disk's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use rocketchat_shim::audit::stats::FSYNC_BUCKETS;
use rocketchat_shim::audit::writer::Options;
use rocketchat_shim::audit::{
    Alias, AuditTrail, CacheStatus, Decision, Endpoint, Event, Person, Room,
};

fn event(i: usize) -> Event {
    let mut e = Event::new(
        format!("req-{i:08}"),
        IpAddr::from([10, 0, 0, 1]),
        Endpoint::MessagesOthers,
        Alias::Im,
    );
    e.actor = Some(Person {
        id: "admin-id".into(),
        username: "admin".into(),
    });
    e.room = Some(Room {
        id: "alice-idbob-id".into(),
        members: Some(vec![
            Person {
                id: "alice-id".into(),
                username: "alice".into(),
            },
            Person {
                id: "bob-id".into(),
                username: "bob".into(),
            },
        ]),
    });
    e.query = Some(serde_json::json!({"offset": 0, "count": 50, "sort": {"ts": -1}}));
    e.reason = Some("INC-1234".into());
    e.cache = CacheStatus::Miss;
    e.set_answer(
        Decision::Allow,
        200,
        br#"{"messages":[{"_id":"m1"},{"_id":"m2"}],"success":true}"#,
    );
    e
}

/// The bucket bound below which `q` of the fsyncs fell.
fn quantile(cumulative: &[u64], q: f64) -> String {
    let total = *cumulative.last().unwrap_or(&0);
    let want = (total as f64 * q).ceil() as u64;
    for (i, c) in cumulative.iter().enumerate() {
        if *c >= want && total > 0 {
            return match FSYNC_BUCKETS.get(i) {
                Some(b) => format!("<= {:.2} ms", b * 1000.0),
                None => "> 2.5 s".into(),
            };
        }
    }
    "-".into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut records = 20_000usize;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--records", Some(n)) => records = n.parse().expect("--records N"),
            ("--dir", Some(d)) => dir = PathBuf::from(d),
            _ => {
                eprintln!("usage: audit_throughput [--records N] [--dir DIR]");
                std::process::exit(2);
            }
        }
    }
    println!("| fsync | concurrent writers | records/s | batches | records per fdatasync | mean fdatasync | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for fsync in [true, false] {
        for writers in [1usize, 16, 256] {
            let path = dir.join(format!(
                "audit-throughput-{}-{fsync}-{writers}.jsonl",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let trail = AuditTrail::open_with(Options {
                instance: "bench".into(),
                fsync,
                max_file_bytes: 1 << 30,
                ..Options::new(&path)
            })
            .expect("open");
            // Fewer records for one synchronous writer with fsync: each waits for the disk.
            let n = if fsync && writers == 1 {
                records / 10
            } else {
                records
            };
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let t = trail.clone();
                tasks.push(tokio::spawn(async move {
                    let mut i = w;
                    while i < n {
                        t.append(event(i)).await.expect("written");
                        i += writers;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            let elapsed = started.elapsed();
            let s = trail.stats().snapshot();
            trail.close().await;
            let _ = std::fs::remove_file(&path);
            let (mean, p50, p99, per) = if s.fsyncs > 0 {
                (
                    format!("{:.2} ms", s.fsync_sum_seconds * 1000.0 / s.fsyncs as f64),
                    quantile(&s.fsync_cumulative, 0.5),
                    quantile(&s.fsync_cumulative, 0.99),
                    format!("{:.1}", s.records_written as f64 / s.fsyncs as f64),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            println!(
                "| {} | {writers} | {:.0} | {} | {per} | {mean} | {p50} | {p99} |",
                if fsync { "always" } else { "never" },
                s.records_written as f64 / elapsed.as_secs_f64(),
                s.batches,
            );
        }
    }
}
