//! Start-up continuation: an existing file is continued, never rewritten.
//!
//! The chain goes on from the file's last line, whatever it is; `seq` goes on from the last
//! line that is a record. A last line without `\n` (torn by a crash or a power loss) is kept
//! as it is: a `\n` is appended and the next record links the torn bytes. An empty or missing
//! file continues the newest rotated file beside it (a crash between a rotation's rename and
//! the new file's first record must not restart the chain at zeros). The file is read
//! backwards in chunks, so start-up reads only the tail of a large file.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::chain::{Linker, GENESIS};
use super::record::ChainFields;
use super::rotate;

/// Where the chain stands when the writer starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Continuation {
    /// The last record's `seq` (0 for a new chain).
    pub seq: u64,
    /// The next record's `prev`.
    pub prev: String,
    /// The file's length, after any repair.
    pub len: u64,
    /// The length of a torn last line that was terminated with `\n`.
    pub torn: Option<usize>,
    /// The rotated file the chain continues from, when the file itself was empty.
    pub from_rotated: Option<PathBuf>,
}

/// Opens `path` for appending and works out where its chain stands, repairing a torn last
/// line (and syncing the repair when `sync`).
pub(super) fn open_and_continue(
    path: &Path,
    linker: &Linker,
    sync: bool,
) -> io::Result<(File, Continuation)> {
    let mut file = rotate::open_append(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        // A device or a FIFO would take records and keep no chain (or block).
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let len = meta.len();
    if len == 0 {
        if let Some(rotated) = rotate::newest_rotated(path)? {
            let old = File::open(&rotated)?;
            let old_len = old.metadata()?.len();
            let tail = scan_tail(&old, old_len)?;
            return Ok((
                file,
                Continuation {
                    seq: tail.seq,
                    prev: tail
                        .last_line
                        .map_or_else(|| GENESIS.to_owned(), |l| linker.link(&l)),
                    len: 0,
                    torn: None,
                    from_rotated: Some(rotated),
                },
            ));
        }
        let c = Continuation {
            seq: 0,
            prev: GENESIS.to_owned(),
            len: 0,
            torn: None,
            from_rotated: None,
        };
        return Ok((file, c));
    }
    let tail = scan_tail(&file, len)?;
    let mut c = Continuation {
        seq: tail.seq,
        prev: tail
            .last_line
            .map_or_else(|| GENESIS.to_owned(), |l| linker.link(&l)),
        len,
        torn: None,
        from_rotated: None,
    };
    if let Some(n) = tail.torn {
        file.write_all(b"\n")?;
        if sync {
            file.sync_data()?;
        }
        c.len += 1;
        c.torn = Some(n);
    }
    Ok((file, c))
}

/// What the end of a file says.
#[derive(Debug, Default)]
struct Tail {
    /// The last line's bytes (without `\n`); `None` for an empty file.
    last_line: Option<Vec<u8>>,
    /// Its length when it has no `\n`.
    torn: Option<usize>,
    /// The `seq` of the last line that is a record (0 if none).
    seq: u64,
}

fn scan_tail(file: &File, len: u64) -> io::Result<Tail> {
    if len == 0 {
        return Ok(Tail::default());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    let torn = last[0] != b'\n';
    let mut lines = RevLines::new(file, if torn { len } else { len - 1 });
    let Some(last_line) = lines.next_line()? else {
        return Ok(Tail::default());
    };
    let mut seq = ChainFields::parse(&last_line).map(|f| f.seq);
    while seq.is_none() {
        match lines.next_line()? {
            Some(l) => seq = ChainFields::parse(&l).map(|f| f.seq),
            None => break,
        }
    }
    Ok(Tail {
        torn: torn.then_some(last_line.len()),
        last_line: Some(last_line),
        seq: seq.unwrap_or(0),
    })
}

/// A file's lines from the last to the first, read backwards in chunks.
struct RevLines<'f> {
    file: &'f File,
    /// Start of the part not read yet.
    pos: u64,
    /// Read but not yet returned: the start of a line whose beginning is not read yet.
    buf: Vec<u8>,
    done: bool,
}

const CHUNK: u64 = 64 * 1024;

impl<'f> RevLines<'f> {
    /// Lines of `file[..end]` (`end` excludes a final `\n`).
    fn new(file: &'f File, end: u64) -> RevLines<'f> {
        RevLines {
            file,
            pos: end,
            buf: Vec::new(),
            done: false,
        }
    }

    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(i) = memchr::memrchr(b'\n', &self.buf) {
                let line = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                return Ok(Some(line));
            }
            if self.pos == 0 {
                self.done = true;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let n = CHUNK.min(self.pos);
            self.pos -= n;
            let mut chunk = vec![0u8; n as usize];
            self.file.read_exact_at(&mut chunk, self.pos)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rcshim-tail-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn reverse_lines_cross_chunks() {
        let d = dir("rev");
        let p = d.join("f");
        let long = vec![b'x'; 200_000];
        let mut content = b"a\n".to_vec();
        content.extend_from_slice(&long);
        content.extend_from_slice(b"\nb");
        std::fs::write(&p, &content).expect("write");
        let f = File::open(&p).expect("open");
        let mut r = RevLines::new(&f, content.len() as u64);
        assert_eq!(r.next_line().expect("read"), Some(b"b".to_vec()));
        assert_eq!(r.next_line().expect("read"), Some(long));
        assert_eq!(r.next_line().expect("read"), Some(b"a".to_vec()));
        assert_eq!(r.next_line().expect("read"), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_tail_is_terminated_and_linked() {
        let d = dir("torn");
        let p = d.join("a.jsonl");
        std::fs::write(&p, b"{\"seq\":4,\"prev\":\"x\"}\n{\"seq\":5,\"pr").expect("write");
        let linker = Linker::plain();
        let (_, c) = open_and_continue(&p, &linker, true).expect("continue");
        assert_eq!(c.seq, 4);
        assert_eq!(c.prev, linker.link(b"{\"seq\":5,\"pr"));
        assert_eq!(c.torn, Some(12));
        assert_eq!(
            std::fs::read(&p).expect("read"),
            b"{\"seq\":4,\"prev\":\"x\"}\n{\"seq\":5,\"pr\n"
        );
        // A second start finds a complete (non-record) last line: same link, nothing appended.
        let (_, again) = open_and_continue(&p, &linker, true).expect("continue");
        assert_eq!((again.seq, again.prev, again.torn), (4, c.prev, None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_file_continues_the_newest_rotated_one() {
        let d = dir("rot");
        let p = d.join("a.jsonl");
        std::fs::write(
            d.join("a.jsonl.20261201T000000.000Z"),
            b"{\"seq\":1,\"prev\":\"\"}\n",
        )
        .expect("write");
        std::fs::write(
            d.join("a.jsonl.20261202T000000.000Z"),
            b"{\"seq\":9,\"prev\":\"\"}\n",
        )
        .expect("write");
        let linker = Linker::plain();
        let (_, c) = open_and_continue(&p, &linker, false).expect("continue");
        assert_eq!(c.seq, 9);
        assert_eq!(c.prev, linker.link(b"{\"seq\":9,\"prev\":\"\"}"));
        assert_eq!(c.from_rotated, Some(d.join("a.jsonl.20261202T000000.000Z")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
