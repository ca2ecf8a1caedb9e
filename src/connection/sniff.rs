//! A read-side observer of HTTP/1 request heads, for the one framing attack hyper resolves
//! silently instead of refusing: a request carrying both `Content-Length` and
//! `Transfer-Encoding` (RFC 9112 §6.3: such a message "ought to be handled as an error", as it
//! is the classic request-smuggling vector). hyper drops the `Content-Length` and keeps going;
//! the shim wants a 400 without anything reaching the upstream, so this wrapper notes, per
//! connection, whether a head it saw had both lines. The flag is sticky: hyper closes a
//! connection after such a request anyway.
//!
//! It looks only at the first bytes of each line (memchr for the line ends), stops looking
//! for HTTP/2 connections, and is switched off only once a `101` has really switched
//! protocols (a request that merely asked for an upgrade leaves it on).
//!
//! For HTTP/2 connections it follows the preface and the first SETTINGS frame instead, and
//! tells the connection's clock ([`ConnClock`]) when they are complete.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use super::clock::ConnClock;

/// Per-connection flags shared between the stream wrapper and the request handler.
#[derive(Debug, Default)]
pub struct ConnFlags {
    /// A request head on this connection had both `Content-Length` and `Transfer-Encoding`.
    pub cl_te_conflict: AtomicBool,
    /// Stop observing (a `101` switched protocols, or HTTP/2).
    pub off: AtomicBool,
    /// The connection's time bounds.
    pub clock: Arc<ConnClock>,
}

impl ConnFlags {
    /// Flags for a connection accepted now, with its head and idle bounds.
    pub fn new(head_timeout: Duration, idle_timeout: Duration) -> Self {
        ConnFlags {
            clock: Arc::new(ConnClock::new(head_timeout, idle_timeout)),
            ..ConnFlags::default()
        }
    }
}

/// The HTTP/2 client preface (RFC 9113 section 3.4).
const H2_PREFACE_LEN: usize = 24;
/// A frame header.
const H2_FRAME_HEADER: usize = 9;
const H2_SETTINGS: u8 = 0x4;

/// Follows an HTTP/2 connection's first bytes up to the end of its first SETTINGS frame.
#[derive(Debug, Default)]
struct H2Start {
    /// Bytes of the preface and frame header seen.
    pos: usize,
    header: [u8; H2_FRAME_HEADER],
    /// Payload bytes of the SETTINGS frame still to come, once its header is complete.
    payload_left: Option<usize>,
    done: bool,
}

impl H2Start {
    /// Feeds bytes read; true exactly once, when the first SETTINGS frame is complete.
    fn observe(&mut self, mut data: &[u8]) -> bool {
        if self.done {
            return false;
        }
        if self.pos < H2_PREFACE_LEN {
            let take = (H2_PREFACE_LEN - self.pos).min(data.len());
            self.pos += take;
            data = &data[take..];
        }
        while self.pos >= H2_PREFACE_LEN && self.pos < H2_PREFACE_LEN + H2_FRAME_HEADER {
            let Some((&b, rest)) = data.split_first() else {
                return false;
            };
            self.header[self.pos - H2_PREFACE_LEN] = b;
            self.pos += 1;
            data = rest;
        }
        if self.pos < H2_PREFACE_LEN + H2_FRAME_HEADER {
            return false;
        }
        if self.payload_left.is_none() {
            if self.header[3] != H2_SETTINGS {
                // Not a valid start; hyper refuses it, and the head bound closes it anyway.
                self.done = true;
                return false;
            }
            let h = &self.header;
            self.payload_left = Some(u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize);
        }
        let left = self.payload_left.unwrap_or(0);
        let left = left - left.min(data.len());
        self.payload_left = Some(left);
        if left == 0 {
            self.done = true;
            return true;
        }
        false
    }
}

const PREFIX: usize = 20;

/// Line-scanning state carried across reads.
#[derive(Debug, Default)]
struct HeadScan {
    /// The first bytes of the current line.
    line: [u8; PREFIX],
    line_len: usize,
    /// All bytes of the current line so far (without the `\n`).
    line_total: usize,
    last_cr: bool,
    cur_cl: bool,
    cur_te: bool,
}

impl HeadScan {
    fn observe(&mut self, data: &[u8], flags: &ConnFlags) {
        let mut rest = data;
        loop {
            let nl = memchr::memchr(b'\n', rest);
            let seg = match nl {
                Some(p) => &rest[..p],
                None => rest,
            };
            if self.line_len < PREFIX {
                let take = (PREFIX - self.line_len).min(seg.len());
                self.line[self.line_len..self.line_len + take].copy_from_slice(&seg[..take]);
                self.line_len += take;
            }
            self.line_total += seg.len();
            if let Some(&b) = seg.last() {
                self.last_cr = b == b'\r';
            }
            let Some(p) = nl else { break };
            let content_len = self.line_total - usize::from(self.last_cr);
            if content_len == 0 {
                // The blank line that ends a head.
                if self.cur_cl && self.cur_te {
                    flags.cl_te_conflict.store(true, Ordering::Relaxed);
                }
                self.cur_cl = false;
                self.cur_te = false;
            } else {
                let l = &self.line[..self.line_len];
                if starts_with_ci(l, b"content-length:") {
                    self.cur_cl = true;
                } else if starts_with_ci(l, b"transfer-encoding:") {
                    self.cur_te = true;
                }
            }
            self.line_len = 0;
            self.line_total = 0;
            self.last_cr = false;
            rest = &rest[p + 1..];
        }
    }
}

pin_project_lite::pin_project! {
    /// The client stream, observed on the way in.
    pub struct Sniffer<T> {
        #[pin]
        inner: T,
        flags: Arc<ConnFlags>,
        scan: HeadScan,
        first: bool,
        // Some once the connection turned out to be HTTP/2.
        h2: Option<H2Start>,
    }
}

impl<T> Sniffer<T> {
    /// Wraps `inner`, reporting into `flags`.
    pub fn new(inner: T, flags: Arc<ConnFlags>) -> Self {
        Sniffer {
            inner,
            flags,
            scan: HeadScan::default(),
            first: true,
            h2: None,
        }
    }
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl<T: AsyncRead> AsyncRead for Sniffer<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            if let Some(h2) = this.h2 {
                if h2.observe(new) {
                    this.flags.clock.h2_ready();
                }
                return res;
            }
            if this.flags.off.load(Ordering::Relaxed) {
                return res;
            }
            if *this.first && !new.is_empty() {
                *this.first = false;
                if new.starts_with(b"PRI * HTTP/2") {
                    this.flags.off.store(true, Ordering::Relaxed);
                    let mut h2 = H2Start::default();
                    if h2.observe(new) {
                        this.flags.clock.h2_ready();
                    }
                    *this.h2 = Some(h2);
                    return res;
                }
            }
            this.scan.observe(new, this.flags);
        }
        res
    }
}

crate::read_cap::delegate_async_write!(Sniffer);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> bool {
        let flags = ConnFlags::default();
        let mut scan = HeadScan::default();
        for c in chunks {
            scan.observe(c, &flags);
        }
        flags.cl_te_conflict.load(Ordering::Relaxed)
    }

    #[test]
    fn detects_both_headers_in_one_head() {
        assert!(run(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        assert!(run(&[
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n"
        ]));
    }

    #[test]
    fn detects_across_split_reads() {
        assert!(run(&[
            b"POST / HTTP/1.1\r\nContent-Le",
            b"ngth: 4\r\nTransfer-",
            b"Encoding: chunked\r",
            b"\n\r",
            b"\n",
        ]));
    }

    #[test]
    fn h2_start_ends_with_the_first_settings_frame() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = [0u8, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut all = preface.to_vec();
        all.extend_from_slice(&settings);
        // Whole, and byte by byte: complete exactly at the last payload byte.
        assert!(H2Start::default().observe(&all));
        let mut h = H2Start::default();
        for (i, b) in all.iter().enumerate() {
            assert_eq!(h.observe(&[*b]), i == all.len() - 1, "byte {i}");
        }
        // The preface alone, or a first frame that is not SETTINGS: never complete.
        assert!(!H2Start::default().observe(preface));
        let mut ping = preface.to_vec();
        ping.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(!H2Start::default().observe(&ping));
        // An empty SETTINGS frame completes with its header.
        let mut empty = preface.to_vec();
        empty.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(H2Start::default().observe(&empty));
    }

    #[test]
    fn ignores_a_single_framing_header() {
        assert!(!run(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"]));
        assert!(!run(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        assert!(!run(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(!run(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
