//! The audit trail's writer, driven directly (spec/shim.md 9.1): exact record lines, the
//! chain and its HMAC checked by an independent computation written here (not by the code
//! under test), continuation across restarts (a torn last line included) and rotations, 50
//! concurrent appends through a tiny queue, group commit, and a file that cannot grow
//! (RLIMIT_FSIZE, in a child process) giving errors and the failure state, then recovery.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rocketchat_shim::audit::writer::Options;
use rocketchat_shim::audit::{
    Alias, AuditError, AuditTrail, CacheStatus, Decision, Endpoint, Event, Person, Room,
};
use rocketchat_shim::config::AuditConfig;
use sha2::{Digest, Sha256};

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn tempdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-trail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

fn options(path: &Path) -> Options {
    Options {
        instance: "test-instance".into(),
        probe_every: Duration::from_millis(20),
        ..Options::new(path)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256, computed here.
fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA256 written out from RFC 2104 (not through the `hmac` crate the shim uses).
fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(data)
        .finalize();
    hex(&Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize())
}

/// The lines of `files` concatenated, without their `\n`; asserts every file ends with one.
fn lines_of(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "{} ends mid-line",
            f.display()
        );
        out.extend(bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec));
        out.pop();
    }
    out
}

/// Checks the chain independently: each line's `prev` is `link` of the previous line (the
/// first's is `start`), and `seq` counts up from `first_seq`. Returns the seqs.
fn check_chain(
    lines: &[Vec<u8>],
    start: &str,
    first_seq: u64,
    link: impl Fn(&[u8]) -> String,
) -> Vec<u64> {
    let mut prev = start.to_owned();
    let mut seqs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("line {}: {e}: {}", i + 1, String::from_utf8_lossy(line)));
        assert_eq!(
            v["prev"].as_str(),
            Some(prev.as_str()),
            "prev of line {}",
            i + 1
        );
        let seq = v["seq"].as_u64().expect("seq");
        assert_eq!(seq, first_seq + i as u64, "seq of line {}", i + 1);
        seqs.push(seq);
        prev = link(line);
    }
    seqs
}

fn event(request_id: &str) -> Event {
    let mut e = Event::new(
        request_id,
        IpAddr::from([127, 0, 0, 1]),
        Endpoint::MessagesOthers,
        Alias::Im,
    );
    e.actor = Some(Person {
        id: "admin-id".into(),
        username: "admin".into(),
    });
    e.room = Some(Room {
        id: "alice-idbob-id".into(),
        members: None,
    });
    e.query = Some(serde_json::json!({"offset": 0, "count": 2}));
    e.cache = CacheStatus::Miss;
    e.set_answer(
        Decision::Allow,
        200,
        br#"{"messages":[{"_id":"m1","msg":"hi"}],"success":true}"#,
    );
    e
}

/// Whether `ts` looks like `2026-12-01T20:58:58.123Z`.
fn is_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn records_are_exact_lines_in_the_order_of_9_1() {
    let dir = tempdir("exact");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");

    let mut allowed = Event::new(
        "req-1",
        IpAddr::from([10, 1, 2, 3]),
        Endpoint::MessagesOthers,
        Alias::Dm,
    );
    allowed.actor = Some(Person {
        id: "admin-id".into(),
        username: "admin".into(),
    });
    allowed.room = Some(Room {
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
    allowed.query = Some(serde_json::json!({"offset": 0, "count": 2, "sort": {"ts": -1}}));
    allowed.reason = Some("INC-42".into());
    allowed.cache = CacheStatus::Hit;
    let body = br#"{"messages":[{"_id":"m2","msg":"secret text"},{"_id":"m1","msg":"more"}],"count":2,"offset":0,"total":2,"success":true}"#;
    allowed.set_answer(Decision::Allow, 200, body);
    let r1 = trail.append(allowed).await.expect("written");
    assert_eq!(r1.seq, 1);

    let mut refused = Event::new(
        "req-2",
        IpAddr::from([10, 1, 2, 4]),
        Endpoint::ListEveryone,
        Alias::Im,
    );
    refused.set_answer(
        Decision::Refuse,
        401,
        br#"{"status":"error","message":"You must be logged in to do this."}"#,
    );
    let r2 = trail.append(refused).await.expect("written");
    assert_eq!(r2.seq, 2);

    let lines = lines_of(std::slice::from_ref(&path));
    assert_eq!(lines.len(), 2);
    let first = String::from_utf8(lines[0].clone()).expect("utf-8");
    let ts1 = &first[first.find("\"ts\":\"").expect("ts") + 6..][..24];
    assert!(is_ts(ts1), "{ts1}");
    // The digest of the ids in answer order, computed here.
    let digest = sha256_hex(b"m2\nm1");
    assert_eq!(
        first,
        format!(
            concat!(
                r#"{{"seq":1,"ts":"{ts}","instance":"test-instance","request_id":"req-1","client_ip":"10.1.2.3","#,
                r#""actor":{{"id":"admin-id","username":"admin"}},"endpoint":"im.messages.others","alias":"dm","#,
                r#""room":{{"id":"alice-idbob-id","members":[{{"id":"alice-id","username":"alice"}},{{"id":"bob-id","username":"bob"}}]}},"#,
                r#""query":{{"offset":0,"count":2,"sort":{{"ts":-1}}}},"reason":"INC-42","decision":"allow","status":200,"error":null,"#,
                r#""messages":2,"message_ids_sha256":"{digest}","cache":"hit","alert":false,"prev":"{zeros}"}}"#
            ),
            ts = ts1,
            digest = digest,
            zeros = ZEROS
        )
    );
    assert!(
        !first.contains("secret text"),
        "no message text in a record"
    );
    let second = String::from_utf8(lines[1].clone()).expect("utf-8");
    let ts2 = &second[second.find("\"ts\":\"").expect("ts") + 6..][..24];
    assert!(is_ts(ts2), "{ts2}");
    assert_eq!(
        second,
        format!(
            concat!(
                r#"{{"seq":2,"ts":"{ts}","instance":"test-instance","request_id":"req-2","client_ip":"10.1.2.4","#,
                r#""actor":null,"endpoint":"im.list.everyone","alias":"im","room":null,"query":null,"reason":null,"#,
                r#""decision":"refuse","status":401,"error":"not-logged-in","messages":null,"message_ids_sha256":null,"#,
                r#""cache":"bypass","alert":false,"prev":"{prev}"}}"#
            ),
            ts = ts2,
            prev = sha256_hex(&lines[0])
        )
    );
    assert_eq!(r1.link, sha256_hex(&lines[0]));
    assert_eq!(r2.link, sha256_hex(&lines[1]));
    trail.close().await;
}

#[tokio::test]
async fn the_chain_is_sha256_of_each_previous_line() {
    let dir = tempdir("sha");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    for i in 0..5 {
        trail
            .append(event(&format!("r{i}")))
            .await
            .expect("written");
    }
    trail.close().await;
    let seqs = check_chain(&lines_of(&[path]), ZEROS, 1, sha256_hex);
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn with_a_key_the_chain_is_hmac_sha256() {
    let dir = tempdir("hmac");
    let path = dir.join("a.jsonl");
    let var = "RCSHIM_AUDIT_TEST_HMAC_KEY";
    std::env::set_var(var, "s3cret-key");
    let config = AuditConfig {
        enabled: true,
        path: path.clone(),
        instance: "i".into(),
        hmac_key_env: var.into(),
        ..AuditConfig::default()
    };
    let trail = AuditTrail::open(&config).expect("open");
    for i in 0..4 {
        trail
            .append(event(&format!("r{i}")))
            .await
            .expect("written");
    }
    trail.close().await;
    let lines = lines_of(&[path]);
    check_chain(&lines, ZEROS, 1, |l| hmac_sha256_hex(b"s3cret-key", l));
    // And not plain SHA-256: without the key the links cannot be recomputed.
    let v: serde_json::Value = serde_json::from_slice(&lines[1]).expect("json");
    assert_ne!(v["prev"].as_str(), Some(sha256_hex(&lines[0]).as_str()));

    // A named variable that is not set is an error, not a silent fall-back to SHA-256.
    let missing = AuditConfig {
        hmac_key_env: "RCSHIM_AUDIT_TEST_UNSET_KEY".into(),
        path: dir.join("b.jsonl"),
        ..AuditConfig::default()
    };
    let e = AuditTrail::open(&missing).expect_err("no key");
    assert!(matches!(e, AuditError::Key(_)), "{e}");
    assert!(e.to_string().contains("RCSHIM_AUDIT_TEST_UNSET_KEY"), "{e}");
}

#[tokio::test]
async fn a_restart_continues_the_chain_and_seq() {
    let dir = tempdir("restart");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    for i in 0..3 {
        trail
            .append(event(&format!("a{i}")))
            .await
            .expect("written");
    }
    trail.close().await;
    let trail = AuditTrail::open_with(options(&path)).expect("reopen");
    let r = trail.append(event("b0")).await.expect("written");
    assert_eq!(r.seq, 4);
    trail.append(event("b1")).await.expect("written");
    trail.close().await;
    let seqs = check_chain(&lines_of(&[path]), ZEROS, 1, sha256_hex);
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_torn_last_line_is_kept_and_chained_on() {
    let dir = tempdir("torn");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    for i in 0..3 {
        trail
            .append(event(&format!("a{i}")))
            .await
            .expect("written");
    }
    trail.close().await;
    // A crash in the middle of record 4's write: its first bytes, no `\n`.
    let before = std::fs::read(&path).expect("read");
    let torn =
        br#"{"seq":4,"ts":"2026-12-01T20:58:58.123Z","instance":"test-instance","request_id":"tor"#;
    let mut with_torn = before.clone();
    with_torn.extend_from_slice(torn);
    std::fs::write(&path, &with_torn).expect("tear");

    let trail = AuditTrail::open_with(options(&path)).expect("reopen");
    let r = trail.append(event("after")).await.expect("written");
    // seq follows the last complete record; prev links the torn bytes.
    assert_eq!(r.seq, 4);
    trail.close().await;
    let bytes = std::fs::read(&path).expect("read");
    assert!(
        bytes.starts_with(&with_torn),
        "the torn bytes are kept as they were"
    );
    assert_eq!(bytes[with_torn.len()], b'\n', "and terminated");
    let lines = lines_of(&[path]);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[3], torn.to_vec());
    check_chain(&lines[..3], ZEROS, 1, sha256_hex);
    let last: serde_json::Value = serde_json::from_slice(&lines[4]).expect("json");
    assert_eq!(last["seq"], 4);
    assert_eq!(last["prev"].as_str(), Some(sha256_hex(torn).as_str()));
    assert_eq!(last["request_id"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_continues_the_chain_across_files() {
    let dir = tempdir("rotate");
    let path = dir.join("a.jsonl");
    let max = 4096u64;
    let trail = AuditTrail::open_with(Options {
        max_file_bytes: max,
        ..options(&path)
    })
    .expect("open");
    // Concurrent appends: rotations also fall in the middle of a write batch.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let t = trail.clone();
        tasks.push(tokio::spawn(async move {
            t.append(event(&format!("r{i:02}"))).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("written");
    }
    trail.close().await;

    let mut rotated: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p != &path)
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 3, "{rotated:?}");
    for r in &rotated {
        let name = r.file_name().expect("name").to_string_lossy().into_owned();
        let stamp = name.strip_prefix("a.jsonl.").expect("a rotated name");
        let (stamp, suffix) = stamp.split_at(20);
        assert!(
            stamp.as_bytes()[8] == b'T' && stamp.as_bytes()[15] == b'.' && stamp.ends_with('Z'),
            "{name}"
        );
        assert!(
            suffix.is_empty() || (suffix.len() == 4 && suffix.starts_with('-')),
            "{name}"
        );
        let len = std::fs::metadata(r).expect("meta").len();
        assert!(len <= max && len > max / 2, "{name}: {len} bytes");
    }
    let mut files = rotated.clone();
    files.push(path.clone());
    let seqs = check_chain(&lines_of(&files), ZEROS, 1, sha256_hex);
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // Each new file's first prev links the last line of the file renamed before it.
    for pair in files.windows(2) {
        let last = lines_of(&pair[..1]).pop().expect("a line");
        let first: serde_json::Value =
            serde_json::from_slice(&lines_of(&pair[1..2])[0]).expect("json");
        assert_eq!(first["prev"].as_str(), Some(sha256_hex(&last).as_str()));
    }

    // A restart after rotations goes on in the current file.
    let trail = AuditTrail::open_with(Options {
        max_file_bytes: max,
        ..options(&path)
    })
    .expect("reopen");
    assert_eq!(trail.append(event("later")).await.expect("written").seq, 41);
    trail.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_appends_through_a_tiny_queue_are_fifty_whole_lines() {
    let dir = tempdir("fifty");
    let path = dir.join("a.jsonl");
    // A queue of 2: most appends wait for room (back-pressure); none is dropped.
    let trail = AuditTrail::open_with(Options {
        queue_capacity: 2,
        ..options(&path)
    })
    .expect("open");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let t = trail.clone();
        tasks.push(tokio::spawn(async move {
            t.append(event(&format!("c{i:02}"))).await
        }));
    }
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.expect("task").expect("written").seq);
    }
    receipts.sort_unstable();
    assert_eq!(receipts, (1..=50).collect::<Vec<_>>());
    assert_eq!(trail.stats().snapshot().records_written, 50);
    trail.close().await;
    let lines = lines_of(&[path]);
    assert_eq!(lines.len(), 50);
    check_chain(&lines, ZEROS, 1, sha256_hex);
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).expect("json")["request_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..50).map(|i| format!("c{i:02}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn records_queued_together_share_one_write_and_one_fdatasync() {
    let dir = tempdir("group");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    // 200 appends polled together: they are queued while the writer syncs the first batch.
    let results =
        futures_util::future::join_all((0..200).map(|i| trail.append(event(&format!("g{i}")))))
            .await;
    assert!(results.iter().all(Result::is_ok));
    let s = trail.stats().snapshot();
    assert_eq!(s.records_written, 200);
    assert_eq!(s.fsyncs, s.batches, "one fdatasync per batch");
    assert!(
        s.fsyncs < 200,
        "group commit: {} fdatasyncs for 200 records",
        s.fsyncs
    );
    let mut text = String::new();
    trail.stats().render(&mut text);
    assert!(
        text.contains("\nrcshim_audit_records_written_total 200\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nrcshim_audit_fsync_duration_seconds_count {}\n",
            s.fsyncs
        )),
        "{text}"
    );
    trail.close().await;
    check_chain(&lines_of(&[path]), ZEROS, 1, sha256_hex);
}

#[tokio::test]
async fn an_unusable_path_is_an_open_error_and_one_file_has_one_writer() {
    let dir = tempdir("unusable");
    let e = AuditTrail::open_with(options(&dir.join("missing-dir/a.jsonl"))).expect_err("no dir");
    assert!(matches!(e, AuditError::Open { .. }), "{e}");
    assert!(e.to_string().contains("missing-dir"), "{e}");
    let e = AuditTrail::open_with(options(&dir)).expect_err("a directory");
    assert!(matches!(e, AuditError::Open { .. }), "{e}");
    let e = AuditTrail::open_with(options(Path::new("/dev/null"))).expect_err("a device");
    assert_eq!(
        e.to_string(),
        "cannot open the audit trail /dev/null: not a regular file"
    );

    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    let e = AuditTrail::open_with(options(&dir.join("./a.jsonl"))).expect_err("second writer");
    assert!(matches!(e, AuditError::AlreadyOpen { .. }), "{e}");
    trail.clone().close().await;
    // After close, other handles are told; the path can be opened again.
    assert_eq!(
        trail.append(event("late")).await.expect_err("closed"),
        AuditError::Closed
    );
    let again = AuditTrail::open_with(options(&path)).expect("reopen after close");
    again.close().await;
}

/// Makes a file immutable (`chattr +i`: writes fail with EPERM, also for root) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let s = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .expect("chattr (e2fsprogs)");
        assert!(s.success(), "chattr +i");
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Waits (at most 10 s) for `f` to hold.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn a_trail_that_cannot_be_written_fails_then_comes_back_by_itself() {
    let dir = tempdir("immutable");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    trail.append(event("before")).await.expect("written");
    let immutable = Immutable::set(&path);
    let e = trail
        .append(event("refused"))
        .await
        .expect_err("an immutable file");
    assert!(matches!(e, AuditError::Write(_)), "{e}");
    assert!(trail.is_failing());
    assert_eq!(trail.stats().snapshot().write_failures, 1);
    // The idle probe (every 20 ms here) finds it still unwritable ...
    let probes = trail.stats().snapshot().probes;
    wait_until("three more probes", || {
        trail.stats().snapshot().probes >= probes + 3
    })
    .await;
    assert!(trail.is_failing());
    // ... and, once it can be written, clears the state with no record appended, so that
    // /readyz recovers without traffic.
    drop(immutable);
    wait_until("the state cleared", || !trail.is_failing()).await;
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        1,
        "no probe file left"
    );
    let r = trail.append(event("after")).await.expect("written");
    assert_eq!(r.seq, 2);
    trail.close().await;
    let lines = lines_of(std::slice::from_ref(&path));
    check_chain(&lines, ZEROS, 1, sha256_hex);
    let ids: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).expect("json")["request_id"].clone()
        })
        .collect();
    assert_eq!(ids, ["before", "after"]);
}

const FSIZE_LIMIT: u64 = 8192;
const CHILD_ENV: &str = "RCSHIM_AUDIT_FSIZE_CHILD";

/// Runs `fsize_child` in a child process whose files cannot grow past 8 KiB (`prlimit
/// --fsize`), then checks what it left independently.
#[test]
fn a_file_that_cannot_grow_fails_counts_and_recovers() {
    let dir = tempdir("fsize");
    let out = Command::new("prlimit")
        .arg(format!("--fsize={FSIZE_LIMIT}"))
        .arg("--")
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", "fsize_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .output()
        .expect("run prlimit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("fsize child: done"), "{stdout}\n{stderr}");
    // What the child left: whole lines only, one chain, nothing of the failed record.
    let path = dir.join("a.jsonl");
    let lines = lines_of(std::slice::from_ref(&path));
    let seqs = check_chain(&lines, ZEROS, 1, sha256_hex);
    assert!(seqs.len() >= 3, "{seqs:?}");
    assert!(lines
        .iter()
        .all(|l| !l.windows(9).any(|w| w == b"too-large")));
    assert!(std::fs::metadata(&path).expect("meta").len() <= FSIZE_LIMIT);
}

/// The child half of the test above: does nothing unless started by it.
#[tokio::test]
async fn fsize_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    // Past RLIMIT_FSIZE a write raises SIGXFSZ, which kills by default; with a handler the
    // write fails with EFBIG instead, as a disk-full write fails with ENOSPC.
    let _sigxfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
        .expect("SIGXFSZ handler");
    let path = dir.join("a.jsonl");
    let trail = AuditTrail::open_with(options(&path)).expect("open");
    let len = || std::fs::metadata(&path).expect("meta").len();
    let with_reason = |id: &str, n: usize| {
        let mut e = event(id);
        e.reason = Some("x".repeat(n));
        e
    };
    // Line length = base + reason length (seq stays one digit).
    trail
        .append(with_reason("first", 1000))
        .await
        .expect("written");
    let base = len() - 1000;
    while len() + base + 1000 <= FSIZE_LIMIT - 1500 {
        trail
            .append(with_reason("fill", 1000))
            .await
            .expect("written");
    }
    let kept = len();
    let room = FSIZE_LIMIT - kept;
    let before = trail.stats().snapshot();
    assert!(!before.failing);

    // Larger than the room left: a short write, then EFBIG. Cut off, reported, failing.
    let big = (room - base + 50) as usize;
    let e = trail
        .append(with_reason("too-large", big))
        .await
        .expect_err("cannot grow");
    assert!(matches!(e, AuditError::Write(_)), "{e}");
    assert!(trail.is_failing());
    assert_eq!(len(), kept, "no partial line left behind");
    let s = trail.stats().snapshot();
    assert_eq!(s.write_failures, 1);
    assert!(s.failing);

    // A record that fits is written, takes the failed one's seq, and clears the state.
    let small = (room - base - 10) as usize;
    let r = trail
        .append(with_reason("fits", small))
        .await
        .expect("written");
    assert_eq!(r.seq, before.records_written + 1);
    assert!(!trail.is_failing());
    assert_eq!(
        trail.stats().snapshot().records_written,
        before.records_written + 1
    );
    trail.close().await;
    println!("fsize child: done");
}
