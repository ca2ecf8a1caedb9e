//! Tunnels for WebSocket and other HTTP/1.1 upgrades: once both sides have switched
//! protocols, bytes are copied both ways until either side closes. There is no total timeout
//! (a Rocket.Chat websocket lives for hours); tunnels are tracked so a graceful shutdown can
//! wait for them.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::state::{AppState, RequestCtx};

/// Spawns the task that joins the client's and the upstream's upgraded connections.
pub fn spawn_tunnel(app: &AppState, client: OnUpgrade, upstream: OnUpgrade, ctx: &RequestCtx) {
    let metrics = app.metrics.clone();
    let request_id = ctx.request_id.clone();
    app.tunnels.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(request_id = ?request_id, error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _open = metrics.tunnel_opened();
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                metrics.tunnel_bytes(up, down);
                tracing::debug!(request_id = ?request_id, up, down, "tunnel closed");
            }
            Err(e) => {
                tracing::debug!(request_id = ?request_id, error = %e, "tunnel ended with an error");
            }
        }
    });
}
