//! A read-side observer of HTTP/1 request heads, for the one framing attack hyper resolves
//! silently instead of refusing: a request carrying both `Content-Length` and
//! `Transfer-Encoding` (RFC 9112 §6.3: such a message "ought to be handled as an error", as it
//! is the classic request-smuggling vector). hyper drops the `Content-Length` and keeps going;
//! the shim wants a 400 without anything reaching the upstream, so this wrapper notes, per
//! connection, whether a head it saw had both lines. The flag is sticky: hyper closes a
//! connection after such a request anyway.
//!
//! It looks only at the first bytes of each line (memchr for the line ends), stops looking
//! for HTTP/2 connections, and is switched off once a connection is upgraded to a tunnel.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-connection flags shared between the stream wrapper and the request handler.
#[derive(Debug, Default)]
pub struct ConnFlags {
    /// A request head on this connection had both `Content-Length` and `Transfer-Encoding`.
    pub cl_te_conflict: AtomicBool,
    /// Stop observing (upgraded, or HTTP/2).
    pub off: AtomicBool,
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
            if this.flags.off.load(Ordering::Relaxed) {
                return res;
            }
            let new = &buf.filled()[before..];
            if *this.first && !new.is_empty() {
                *this.first = false;
                if new.starts_with(b"PRI * HTTP/2") {
                    this.flags.off.store(true, Ordering::Relaxed);
                    return res;
                }
            }
            this.scan.observe(new, this.flags);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Sniffer<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

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
