//! `audit verify`: checks the chain over files given in order (a rotated set in time order).
//!
//! Each line must be a record whose `seq` follows the previous record's and whose `prev`
//! links the previous line's exact bytes (64 zeros for the first line of a chain, or the
//! `--from` link). A line that is not a record is a torn write when the next line links its
//! bytes or when it ends the last file: reported, not a break. The first line at which a
//! check fails is named; after an edit in the middle that is usually the line after the
//! edited one, whose `prev` no longer matches.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::chain::{Linker, GENESIS};
use super::record::ChainFields;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The chain holds.
    Intact {
        records: u64,
        /// The last record's `seq` (0 without records).
        last_seq: u64,
        /// The last line's link: what to ship elsewhere to detect tail truncation.
        last_hash: String,
        /// `FILE:LINE: torn record` notes.
        notes: Vec<String>,
    },
    /// The chain breaks: `FILE:LINE: <what is wrong>`.
    Broken { at: String, notes: Vec<String> },
}

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: cannot read: {source}")]
pub struct ReadError {
    pub file: String,
    pub source: io::Error,
}

/// Verifies `files` in order, links computed by `linker`, the first `prev` expected to be
/// `from` (or 64 zeros).
pub fn verify_files(
    files: &[impl AsRef<Path>],
    linker: &Linker,
    from: Option<&str>,
) -> Result<Outcome, ReadError> {
    let mut v = Verifier::new(linker.clone(), from);
    for path in files {
        let path = path.as_ref();
        let name = path.display().to_string();
        let err = |source| ReadError {
            file: name.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(err)?);
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(err)? == 0 {
                break;
            }
            number += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if let Err(at) = v.feed(&name, number, &line) {
                return Ok(Outcome::Broken { at, notes: v.notes });
            }
        }
    }
    Ok(v.finish())
}

/// A line that is not a record, waiting for the next line to say whether it links it.
struct Pending {
    at: String,
    link: String,
}

/// The chain check, fed one line at a time.
pub struct Verifier {
    linker: Linker,
    /// `--from` was given: the first record's `seq` is not known.
    continued: bool,
    expected_prev: String,
    last_seq: Option<u64>,
    last_link: String,
    records: u64,
    pending: Option<Pending>,
    notes: Vec<String>,
}

impl Verifier {
    /// A check starting at `from` (or a new chain's 64 zeros).
    pub fn new(linker: Linker, from: Option<&str>) -> Verifier {
        let start = from.unwrap_or(GENESIS).to_owned();
        Verifier {
            linker,
            continued: from.is_some(),
            expected_prev: start.clone(),
            last_seq: None,
            last_link: start,
            records: 0,
            pending: None,
            notes: Vec::new(),
        }
    }

    /// Checks the next line (without its `\n`); `Err` names the first bad line.
    pub fn feed(&mut self, file: &str, number: u64, line: &[u8]) -> Result<(), String> {
        let link = self.linker.link(line);
        let Some(f) = ChainFields::parse(line) else {
            if let Some(p) = self.pending.take() {
                return Err(format!(
                    "{}: bad JSON (not a record, and the next line does not link it)",
                    p.at
                ));
            }
            self.pending = Some(Pending {
                at: format!("{file}:{number}"),
                link: link.clone(),
            });
            self.expected_prev = link.clone();
            self.last_link = link;
            return Ok(());
        };
        if let Some(p) = self.pending.take() {
            if f.prev != p.link {
                return Err(format!(
                    "{}: bad JSON (not a record, and the next line does not link it)",
                    p.at
                ));
            }
            self.notes.push(format!("{}: torn record", p.at));
        }
        let expected_seq = match self.last_seq {
            Some(s) => Some(s + 1),
            None if self.continued => None,
            None => Some(1),
        };
        if let Some(e) = expected_seq.filter(|e| *e != f.seq) {
            return Err(format!(
                "{file}:{number}: seq gap: expected {e}, found {}",
                f.seq
            ));
        }
        if f.prev != self.expected_prev {
            let what = if self.records == 0 && self.expected_prev == GENESIS {
                "the first record of a chain links 64 zeros (use --from to verify a rotated file alone)"
            } else {
                "the previous line was changed or removed, or the key differs"
            };
            return Err(format!(
                "{file}:{number}: prev mismatch: {what} (expected {}, found {})",
                self.expected_prev, f.prev
            ));
        }
        self.last_seq = Some(f.seq);
        self.records += 1;
        self.expected_prev = link.clone();
        self.last_link = link;
        Ok(())
    }

    /// The result once every line was fed: a line left pending ends the last file, so it
    /// is a torn record.
    pub fn finish(mut self) -> Outcome {
        if let Some(p) = self.pending.take() {
            self.notes.push(format!("{}: torn record", p.at));
        }
        Outcome::Intact {
            records: self.records,
            last_seq: self.last_seq.unwrap_or(0),
            last_hash: self.last_link,
            notes: self.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` minimal records, as lines.
    fn chain(n: u64, linker: &Linker) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let line = format!("{{\"seq\":{seq},\"x\":1,\"prev\":\"{prev}\"}}").into_bytes();
                prev = linker.link(&line);
                line
            })
            .collect()
    }

    fn run(lines: &[Vec<u8>], linker: &Linker, from: Option<&str>) -> Outcome {
        let mut v = Verifier::new(linker.clone(), from);
        for (i, l) in lines.iter().enumerate() {
            if let Err(at) = v.feed("f", i as u64 + 1, l) {
                return Outcome::Broken { at, notes: v.notes };
            }
        }
        v.finish()
    }

    #[test]
    fn an_intact_chain_and_its_last_hash() {
        let l = Linker::plain();
        let lines = chain(3, &l);
        assert_eq!(
            run(&lines, &l, None),
            Outcome::Intact {
                records: 3,
                last_seq: 3,
                last_hash: l.link(&lines[2]),
                notes: vec![]
            }
        );
        // The tail alone, continuing from the link of line 1.
        let from = l.link(&lines[0]);
        assert!(matches!(
            run(&lines[1..], &l, Some(&from)),
            Outcome::Intact { records: 2, .. }
        ));
        // Without --from the tail does not start a chain.
        let Outcome::Broken { at, .. } = run(&lines[1..], &l, None) else {
            panic!("broken")
        };
        assert!(at.starts_with("f:1: seq gap: expected 1, found 2"), "{at}");
    }

    #[test]
    fn breaks_are_named_at_the_first_failing_line() {
        let l = Linker::plain();
        let lines = chain(4, &l);
        let mut edited = lines.clone();
        edited[1] = edited[1].replace_x();
        let Outcome::Broken { at, .. } = run(&edited, &l, None) else {
            panic!("edited")
        };
        assert!(at.starts_with("f:3: prev mismatch"), "{at}");
        let deleted = [lines[0].clone(), lines[2].clone(), lines[3].clone()];
        let Outcome::Broken { at, .. } = run(&deleted, &l, None) else {
            panic!("deleted")
        };
        assert_eq!(at, "f:2: seq gap: expected 2, found 3");
        let swapped = [
            lines[0].clone(),
            lines[2].clone(),
            lines[1].clone(),
            lines[3].clone(),
        ];
        let Outcome::Broken { at, .. } = run(&swapped, &l, None) else {
            panic!("swapped")
        };
        assert_eq!(at, "f:2: seq gap: expected 2, found 3");
        let keyed = Linker::keyed(b"k");
        let Outcome::Broken { at, .. } = run(&lines, &keyed, None) else {
            panic!("wrong key")
        };
        assert!(at.starts_with("f:2: prev mismatch"), "{at}");
    }

    #[test]
    fn torn_lines_linked_or_last_are_notes() {
        let l = Linker::plain();
        let mut lines = chain(2, &l);
        let torn = b"{\"seq\":3,\"x\"".to_vec();
        let next = format!("{{\"seq\":3,\"x\":1,\"prev\":\"{}\"}}", l.link(&torn)).into_bytes();
        lines.push(torn.clone());
        lines.push(next.clone());
        assert_eq!(
            run(&lines, &l, None),
            Outcome::Intact {
                records: 3,
                last_seq: 3,
                last_hash: l.link(&next),
                notes: vec!["f:3: torn record".into()]
            }
        );
        // At the very end: a note too, and the last hash is the torn bytes' link.
        let mut ends_torn = chain(2, &l);
        ends_torn.push(torn.clone());
        assert_eq!(
            run(&ends_torn, &l, None),
            Outcome::Intact {
                records: 2,
                last_seq: 2,
                last_hash: l.link(&torn),
                notes: vec!["f:3: torn record".into()]
            }
        );
        // Not linked by the next line: a break at the bad line.
        let mut unlinked = chain(2, &l);
        unlinked.insert(1, b"garbage".to_vec());
        let Outcome::Broken { at, .. } = run(&unlinked, &l, None) else {
            panic!("unlinked")
        };
        assert!(at.starts_with("f:2: bad JSON"), "{at}");
    }

    trait ReplaceX {
        fn replace_x(&self) -> Vec<u8>;
    }

    impl ReplaceX for Vec<u8> {
        fn replace_x(&self) -> Vec<u8> {
            String::from_utf8_lossy(self)
                .replace("\"x\":1", "\"x\":2")
                .into_bytes()
        }
    }
}
