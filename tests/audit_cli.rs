//! `rocketchat-shim audit verify` and `audit report`, run as the built binary on files the
//! test writes (spec/config.md, spec/shim.md 9.1): the exact output lines and exit codes of
//! an intact chain, an edited, a deleted and swapped lines, torn lines, `--key-env`,
//! `--from` and usage errors; the report as a table and as JSON, with `--user` and `--since`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use rocketchat_shim::audit::writer::Options;
use rocketchat_shim::audit::{
    Alias, AuditTrail, CacheStatus, Decision, Endpoint, Event, Linker, Person, Room,
};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_rocketchat-shim");

fn tempdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn shim(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run the binary");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn event(i: usize) -> Event {
    let mut e = Event::new(
        format!("r{i}"),
        IpAddr::from([127, 0, 0, 1]),
        Endpoint::MessagesOthers,
        Alias::Im,
    );
    e.actor = Some(Person {
        id: "admin-id".into(),
        username: "admin".into(),
    });
    e.room = Some(Room {
        id: "room-1".into(),
        members: None,
    });
    e.cache = CacheStatus::Miss;
    e.set_answer(Decision::Allow, 200, br#"{"messages":[],"success":true}"#);
    e
}

/// Writes `n` records to `path` with the shim's writer.
async fn write_trail(path: &Path, n: usize, linker: Linker, max_file_bytes: u64) {
    let trail = AuditTrail::open_with(Options {
        instance: "cli-test".into(),
        linker,
        fsync: false,
        max_file_bytes,
        queue_capacity: 16,
        ..Options::new(path)
    })
    .expect("open");
    for i in 1..=n {
        trail.append(event(i)).await.expect("written");
    }
    trail.close().await;
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read");
    let mut l: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if l.last().is_some_and(Vec::is_empty) {
        l.pop();
    }
    l
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).expect("write");
}

#[tokio::test]
async fn verify_an_intact_chain_prints_ok_and_the_last_hash() {
    let dir = tempdir("ok");
    let path = dir.join("a.jsonl");
    write_trail(&path, 5, Linker::plain(), 1 << 20).await;
    let last = sha256_hex(lines(&path).last().expect("a line"));
    let p = path.to_str().expect("utf-8");
    let (code, out, err) = shim(&["audit", "verify", p], &[]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            0,
            format!("ok: 5 records, last seq 5, last hash {last}\n").as_str(),
            ""
        )
    );
}

#[tokio::test]
async fn verify_names_the_first_bad_line_of_an_edit_a_deletion_and_a_swap() {
    let dir = tempdir("broken");
    let path = dir.join("a.jsonl");
    write_trail(&path, 5, Linker::plain(), 1 << 20).await;
    let good = lines(&path);
    let p = path.to_str().expect("utf-8");

    // Line 3 edited (still valid JSON): line 4's prev no longer matches.
    let mut edited = good.clone();
    edited[2] = String::from_utf8(edited[2].clone())
        .expect("utf-8")
        .replace("\"admin\"", "\"someone-else\"")
        .into_bytes();
    assert_ne!(edited[2], good[2]);
    write_lines(&path, &edited);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("{p}:4: prev mismatch: ")), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    // Line 3 deleted.
    let deleted = [&good[..2], &good[3..]].concat();
    write_lines(&path, &deleted);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(
        (code, out),
        (1, format!("{p}:3: seq gap: expected 3, found 4\n"))
    );

    // Lines 2 and 3 swapped.
    let mut swapped = good.clone();
    swapped.swap(1, 2);
    write_lines(&path, &swapped);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(
        (code, out),
        (1, format!("{p}:2: seq gap: expected 2, found 3\n"))
    );

    // Line 3 cut short (no longer JSON) and not linked by line 4: bad JSON at line 3.
    let mut cut = good.clone();
    cut[2].truncate(40);
    write_lines(&path, &cut);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("{p}:3: bad JSON")), "{out}");

    // The tail cut off is not caught by the chain, only by the shipped last hash.
    write_lines(&path, &good[..4]);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(code, 0);
    assert!(!out.contains(&sha256_hex(&good[4])), "{out}");
}

#[tokio::test]
async fn a_torn_record_is_reported_not_a_break() {
    let dir = tempdir("torn");
    let path = dir.join("a.jsonl");
    write_trail(&path, 3, Linker::plain(), 1 << 20).await;
    // A crash tore record 4; the restarted shim kept it and chained on.
    let mut bytes = std::fs::read(&path).expect("read");
    let torn = br#"{"seq":4,"ts":"2026-12-01T20:58:58.1"#;
    bytes.extend_from_slice(torn);
    std::fs::write(&path, &bytes).expect("tear");
    let p = path.to_str().expect("utf-8");

    // First as it is: the torn line ends the last file.
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "{p}:4: torn record\nok: 3 records, last seq 3, last hash {}\n",
                sha256_hex(torn)
            )
        )
    );
    // Then continued: the next record links the torn bytes.
    write_trail(&path, 2, Linker::plain(), 1 << 20).await;
    let all = lines(&path);
    assert_eq!(all.len(), 6);
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "{p}:4: torn record\nok: 5 records, last seq 5, last hash {}\n",
                sha256_hex(&all[5])
            )
        )
    );
}

#[tokio::test]
async fn verify_with_a_key() {
    let dir = tempdir("key");
    let path = dir.join("a.jsonl");
    write_trail(&path, 3, Linker::keyed(b"k3y"), 1 << 20).await;
    let p = path.to_str().expect("utf-8");
    // Without the key the second line's link cannot be recomputed.
    let (code, out, _) = shim(&["audit", "verify", p], &[]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("{p}:2: prev mismatch")), "{out}");
    let (code, out, _) = shim(
        &["audit", "verify", "--key-env", "RCSHIM_CLI_KEY", p],
        &[("RCSHIM_CLI_KEY", "k3y")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ok: 3 records, last seq 3, last hash "),
        "{out}"
    );
    // A wrong key breaks at line 2 too; an unset variable is a usage error.
    let (code, _, _) = shim(
        &["audit", "verify", "--key-env", "RCSHIM_CLI_KEY", p],
        &[("RCSHIM_CLI_KEY", "wrong")],
    );
    assert_eq!(code, 1);
    let (code, _, err) = shim(
        &["audit", "verify", "--key-env", "RCSHIM_CLI_UNSET_KEY", p],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("RCSHIM_CLI_UNSET_KEY"), "{err}");
}

#[tokio::test]
async fn verify_a_rotated_set_and_a_rotated_file_alone_with_from() {
    let dir = tempdir("from");
    let path = dir.join("a.jsonl");
    write_trail(&path, 20, Linker::plain(), 4096).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p != &path)
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files.push(path.clone());
    let names: Vec<&str> = files.iter().map(|f| f.to_str().expect("utf-8")).collect();
    let mut args = vec!["audit", "verify"];
    args.extend(&names);
    let (code, out, _) = shim(&args, &[]);
    let last = sha256_hex(lines(&path).last().expect("a line"));
    assert_eq!(
        (code, out),
        (
            0,
            format!("ok: 20 records, last seq 20, last hash {last}\n")
        )
    );

    // The second file alone does not start a chain ...
    let (code, out, _) = shim(&["audit", "verify", names[1]], &[]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("{}:1: seq gap: expected 1, found ", names[1])),
        "{out}"
    );
    // ... but continues the first one's last hash.
    let (_, first_out, _) = shim(&["audit", "verify", names[0]], &[]);
    let h = first_out
        .trim()
        .rsplit(' ')
        .next()
        .expect("hash")
        .to_owned();
    assert_eq!(h, sha256_hex(lines(&files[0]).last().expect("a line")));
    let (code, out, _) = shim(&["audit", "verify", "--from", &h, names[1]], &[]);
    assert_eq!(code, 0, "{out}");
    // A wrong --from is a mismatch at the first line.
    let zeros = "0".repeat(64);
    let (code, out, _) = shim(&["audit", "verify", "--from", &zeros, names[1]], &[]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("{}:1: prev mismatch", names[1])),
        "{out}"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let dir = tempdir("usage");
    let missing = dir.join("missing.jsonl");
    let m = missing.to_str().expect("utf-8");
    let (code, out, err) = shim(&["audit", "verify", m], &[]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("missing.jsonl") && err.contains("cannot read"),
        "{err}"
    );
    assert_eq!(shim(&["audit", "verify"], &[]).0, 2, "no FILE");
    assert_eq!(shim(&["audit", "verify", "--from", "xyz", m], &[]).0, 2);
    assert_eq!(shim(&["audit", "verify", "--bogus", m], &[]).0, 2);
    assert_eq!(shim(&["audit", "report", m], &[]).0, 2);
    assert_eq!(shim(&["audit", "report"], &[]).0, 2, "no FILE");
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, b"").expect("write");
    let e = empty.to_str().expect("utf-8");
    assert_eq!(
        shim(&["audit", "report", "--since", "yesterday", e], &[]).0,
        2
    );
    // An empty file is an empty, intact chain.
    let (code, out, _) = shim(&["audit", "verify", e], &[]);
    assert_eq!(
        (code, out),
        (
            0,
            format!("ok: 0 records, last seq 0, last hash {}\n", "0".repeat(64))
        )
    );
}

/// Hand-written records (the report does not check the chain) with chosen times.
fn report_file(dir: &Path) -> PathBuf {
    let person = |id: &str, name: &str| serde_json::json!({"id": id, "username": name});
    let ab = serde_json::json!({"id": "r-ab", "members": [person("u-alice", "alice"), person("u-bob", "bob")]});
    let cd = serde_json::json!({"id": "r-cd", "members": [person("u-carol", "carol"), person("u-dave", "dave")]});
    let record = |seq: u64,
                  ts: &str,
                  actor: serde_json::Value,
                  room: serde_json::Value,
                  decision: &str,
                  status: u16,
                  messages: serde_json::Value| {
        serde_json::json!({
            "seq": seq, "ts": ts, "instance": "h", "request_id": format!("q{seq}"), "client_ip": "127.0.0.1",
            "actor": actor, "endpoint": "im.messages.others", "alias": "im", "room": room, "query": null,
            "reason": null, "decision": decision, "status": status, "error": null, "messages": messages,
            "message_ids_sha256": null, "cache": "miss", "alert": false, "prev": "0".repeat(64)
        })
        .to_string()
    };
    let admin = person("u-admin", "admin");
    let auditor = person("u-aud", "auditor");
    let text = [
        record(
            1,
            "2026-12-01T10:00:00.000Z",
            admin.clone(),
            ab.clone(),
            "allow",
            200,
            3.into(),
        ),
        record(
            2,
            "2026-12-01T11:00:00.000Z",
            admin.clone(),
            serde_json::json!({"id": "r-ab", "members": null}),
            "allow",
            200,
            2.into(),
        ),
        record(
            3,
            "2026-12-01T12:00:00.000Z",
            admin.clone(),
            cd,
            "refuse",
            403,
            serde_json::Value::Null,
        ),
        "{\"seq\":4,\"ts\":\"2026-12-01T12:3".to_owned(),
        record(
            4,
            "2026-12-02T09:00:00.000Z",
            auditor,
            ab,
            "allow",
            200,
            5.into(),
        ),
        record(
            5,
            "2026-12-02T10:00:00.000Z",
            serde_json::Value::Null,
            serde_json::Value::Null,
            "refuse",
            401,
            serde_json::Value::Null,
        ),
    ]
    .join("\n");
    let path = dir.join("report.jsonl");
    std::fs::write(&path, text + "\n").expect("write");
    path
}

#[test]
fn report_as_a_table() {
    let dir = tempdir("report-table");
    let path = report_file(&dir);
    let p = path.to_str().expect("utf-8");
    let (code, out, err) = shim(&["audit", "report", p], &[]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "\
ACTOR            ROOM  MEMBERS     ALLOWED  REFUSED  MESSAGES  FIRST                     LAST
admin (u-admin)  r-ab  alice,bob   2        0        5         2026-12-01T10:00:00.000Z  2026-12-01T11:00:00.000Z
admin (u-admin)  r-cd  carol,dave  0        1        0         2026-12-01T12:00:00.000Z  2026-12-01T12:00:00.000Z
auditor (u-aud)  r-ab  alice,bob   1        0        5         2026-12-02T09:00:00.000Z  2026-12-02T09:00:00.000Z
-                -     -           0        1        0         2026-12-02T10:00:00.000Z  2026-12-02T10:00:00.000Z
"
    );
    // "Who read alice's DMs?"
    let (code, out, _) = shim(&["audit", "report", "--user", "alice", p], &[]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("admin (u-admin)  ") && rows[0].contains(" r-ab "),
        "{out}"
    );
    assert!(rows[1].starts_with("auditor (u-aud)  "), "{out}");
}

#[test]
fn report_as_json_with_user_and_since() {
    let dir = tempdir("report-json");
    let path = report_file(&dir);
    let p = path.to_str().expect("utf-8");
    let (code, out, _) = shim(&["audit", "report", "--json", "--user", "u-admin", p], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON array");
    assert_eq!(
        v,
        serde_json::json!([
            {"actor": {"id": "u-admin", "username": "admin"}, "room": "r-ab",
             "members": [{"id": "u-alice", "username": "alice"}, {"id": "u-bob", "username": "bob"}],
             "allowed": 2, "refused": 0, "messages": 5,
             "first": "2026-12-01T10:00:00.000Z", "last": "2026-12-01T11:00:00.000Z"},
            {"actor": {"id": "u-admin", "username": "admin"}, "room": "r-cd",
             "members": [{"id": "u-carol", "username": "carol"}, {"id": "u-dave", "username": "dave"}],
             "allowed": 0, "refused": 1, "messages": 0,
             "first": "2026-12-01T12:00:00.000Z", "last": "2026-12-01T12:00:00.000Z"}
        ])
    );
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    // --since leaves out what came before (offsets allowed).
    let (code, out, _) = shim(
        &[
            "audit",
            "report",
            "--json",
            "--since",
            "2026-12-02T09:30:00+00:00",
            p,
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json"),
        serde_json::json!([{"actor": null, "room": null, "members": null, "allowed": 0, "refused": 1,
            "messages": 0, "first": "2026-12-02T10:00:00.000Z", "last": "2026-12-02T10:00:00.000Z"}])
    );
    let (code, out, _) = shim(&["audit", "report", "--json", "--user", "nobody", p], &[]);
    assert_eq!((code, out.as_str()), (0, "[]\n"));
}
