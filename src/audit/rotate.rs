//! Rotation: when the file would grow past `audit.max_file_bytes` it is renamed to
//! `<path>.<YYYYMMDDTHHMMSS.mmmZ>` (with a zero-padded `-NNN` if that name is taken, so names
//! sort in time order) and a new file continues the chain. Files are never deleted.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::clock;

/// Opens (creating it) `path` for reading and appending: every write lands at the end
/// (`O_APPEND`), whole.
pub(super) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// The name `path` is renamed to at `now`: the first of `<path>.<stamp>`,
/// `<path>.<stamp>-001`, ... `-999` that does not exist.
pub(super) fn rotated_path(path: &Path, now: OffsetDateTime) -> io::Result<PathBuf> {
    let mut base: OsString = path.as_os_str().to_owned();
    base.push(".");
    base.push(clock::file_stamp(now));
    for n in 0..1000u32 {
        let mut candidate = base.clone();
        if n > 0 {
            candidate.push(format!("-{n:03}"));
        }
        let candidate = PathBuf::from(candidate);
        match std::fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
            Err(e) => return Err(e),
            Ok(_) => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "every rotated name {}[-NNN] is taken",
            PathBuf::from(base).display()
        ),
    ))
}

/// Renames `path` out of the way and opens a new, empty file in its place; with `sync`, the
/// directory is synced too so that the rename and the new name survive a power loss.
/// Returns the rotated name and the new file.
pub(super) fn rotate(path: &Path, now: OffsetDateTime, sync: bool) -> io::Result<(PathBuf, File)> {
    let to = rotated_path(path, now)?;
    std::fs::rename(path, &to)?;
    let file = open_append(path)?;
    if sync {
        sync_dir(path)?;
    }
    Ok((to, file))
}

/// Syncs the directory holding `path` (its entries: renames and new files).
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Whether `candidate` (a file name) is a rotated name of `base` (a file name).
pub(super) fn is_rotated_name(base: &str, candidate: &str) -> bool {
    let Some(rest) = candidate
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    match rest.len() {
        20 => clock::is_file_stamp(rest),
        24 => {
            clock::is_file_stamp(&rest[..20])
                && rest.as_bytes()[20] == b'-'
                && rest[21..].bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// The newest rotated file of `path`, if any (names sort in time order).
pub(super) fn newest_rotated(path: &Path) -> io::Result<Option<PathBuf>> {
    let Some(base) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut newest: Option<(String, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_rotated_name(&base, &name) && newest.as_ref().map_or(true, |(n, _)| name > *n) {
            newest = Some((name, entry.path()));
        }
    }
    Ok(newest.map(|(_, p)| p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_time_order() {
        assert!(is_rotated_name("a.jsonl", "a.jsonl.20261201T205858.123Z"));
        assert!(is_rotated_name(
            "a.jsonl",
            "a.jsonl.20261201T205858.123Z-001"
        ));
        assert!(!is_rotated_name("a.jsonl", "a.jsonl"));
        assert!(!is_rotated_name("a.jsonl", "a.jsonl.bak"));
        assert!(!is_rotated_name("a.jsonl", "b.jsonl.20261201T205858.123Z"));
        let mut names = [
            "a.20261201T205858.124Z",
            "a.20261201T205858.123Z-001",
            "a.20261201T205858.123Z",
        ];
        names.sort();
        assert_eq!(
            names,
            [
                "a.20261201T205858.123Z",
                "a.20261201T205858.123Z-001",
                "a.20261201T205858.124Z"
            ]
        );
    }

    #[test]
    fn a_taken_name_gets_a_suffix() {
        let dir = std::env::temp_dir().join(format!("rcshim-rotate-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.jsonl");
        let now = clock::parse_rfc3339("2026-12-01T20:58:58.123Z").expect("time");
        std::fs::write(&path, b"one\n").expect("write");
        let (first, _) = rotate(&path, now, true).expect("rotate");
        assert_eq!(first, dir.join("t.jsonl.20261201T205858.123Z"));
        std::fs::write(&path, b"two\n").expect("write");
        let (second, _) = rotate(&path, now, false).expect("rotate");
        assert_eq!(second, dir.join("t.jsonl.20261201T205858.123Z-001"));
        assert_eq!(std::fs::read(&path).expect("new file"), b"");
        assert_eq!(newest_rotated(&path).expect("list"), Some(second));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
