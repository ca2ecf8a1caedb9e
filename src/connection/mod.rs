//! One client connection's life, below the listeners that accept it (the client port in
//! `server/`, the admin port in `admin.rs`): the front door (`front.rs`: the PROXY protocol
//! header and the TLS handshake, within the first head's deadline), the byte-level sniffer that sees what hyper hides
//! (`sniff.rs`: CL+TE conflicts, the HTTP/2 preface), the clock that bounds how long it may
//! stay without a request and the slot it holds (`clock.rs`), and [`drive`], which serves it
//! until it ends, drains, or runs out of time.

pub mod clock;
pub mod front;
pub mod sniff;

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio_util::sync::CancellationToken;

use sniff::ConnFlags;

/// Serves one accepted connection until it ends: on `shutdown`, a graceful shutdown; when its
/// clock expires (no head in time, or an idle HTTP/2 connection), it is closed: HTTP/2 with
/// a GOAWAY first (bounded to one second), HTTP/1.x at once (there is no request to finish).
pub async fn drive<C>(conn: C, flags: &ConnFlags, shutdown: &CancellationToken, peer: SocketAddr)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = flags.clock.expired() => {
                let h2 = flags.clock.is_h2();
                tracing::debug!(%peer, h2, "client connection closed: no request head in time, or idle");
                if h2 {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                }
                return;
            }
        }
    }
}
