//! A cap on how much one read from a connection (a client's, or the upstream's) may take.
//!
//! hyper reads a connection into one buffer whose limit, `max_buf_size`, must leave room for
//! the largest request head the shim accepts (twice `max_header_bytes`, at least 400 KiB; see
//! `server::builder`). The same buffer receives request bodies, and each read of a fast
//! uploader can fill it: a body frame is a slice of that buffer, so an upload toward an
//! upstream that does not read held one such buffer or more (1.4 MiB measured per slow writer,
//! more with a larger header limit). Reading at most [`READ_CAP`] bytes at a time keeps each
//! body frame, and hyper's adaptive read size, small whatever the header limit, while a large
//! head is still read whole, in several reads (spec/shim.md §7: at most 256 KiB a direction).
//! The upstream connections are read the same way (`proxy::client`), for the same reason
//! toward clients that read slowly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The most one read from a connection takes.
pub const READ_CAP: usize = 16 * 1024;

pin_project_lite::pin_project! {
    /// Wraps a connection; reads take at most [`READ_CAP`] bytes, writes pass as they are.
    pub struct ReadCap<T> {
        #[pin]
        inner: T,
    }
}

impl<T> ReadCap<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        ReadCap { inner }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead> AsyncRead for ReadCap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if buf.remaining() <= READ_CAP {
            return this.inner.poll_read(cx, buf);
        }
        // Safe code only: the cap's worth of `buf` is initialised (zeroed if it was not; a
        // memset of 16 KiB next to a system call), read into, then marked filled.
        let mut small = ReadBuf::new(buf.initialize_unfilled_to(READ_CAP));
        let res = this.inner.poll_read(cx, &mut small);
        let n = small.filled().len();
        buf.advance(n);
        res
    }
}

/// Implements `AsyncWrite` for a pin-projected wrapper `$t<T>` by handing every call to its
/// `inner` field: the wrappers of this crate (`ReadCap`, the connection sniffer) only look at
/// or bound what is read.
macro_rules! delegate_async_write {
    ($t:ident) => {
        impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for $t<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use delegate_async_write;

delegate_async_write!(ReadCap);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_take_at_most_the_cap_and_lose_nothing() {
        let data: Vec<u8> = (0..READ_CAP * 3 + 7).map(|i| (i % 251) as u8).collect();
        let mut r = ReadCap::new(&data[..]);
        let mut buf = vec![0u8; READ_CAP * 4];
        let n = r.read(&mut buf).await.expect("read");
        assert_eq!(n, READ_CAP);
        let mut all = buf[..n].to_vec();
        r.read_to_end(&mut all).await.expect("rest");
        assert_eq!(all, data);
    }
}
