//! Workers in nginx's shape: each its own `SO_REUSEPORT` listener on the client address and
//! its own current-thread runtime, so that a connection's tasks (the client side, its upstream
//! connection) never wake another thread and the kernel spreads new connections over the
//! listeners. Worker 0 runs on the caller's runtime; workers 1.. each on an OS thread.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{accept_loop, drain, Shared};

/// The kernel's accept queue per listener (what `TcpListener::bind` asks for).
const BACKLOG: u32 = 1024;

/// Binds `n` listeners to `listen` with `SO_REUSEPORT`: the first, then the others to its
/// actual port (so port 0 works). The first is registered on the caller's runtime; the others
/// are returned as std listeners, to be registered on their worker's runtime.
pub(super) fn bind(
    listen: SocketAddr,
    n: usize,
) -> std::io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    // A port some other socket holds must stop the start (exit 1, as with one worker), even
    // when that socket set SO_REUSEPORT too (another shim of the same user): a plain bind
    // first says whether the address is free.
    if listen.port() != 0 {
        drop(plain_socket(listen)?);
    }
    let first = reuseport_listener(listen)?;
    let bound = first.local_addr()?;
    let mut others = Vec::with_capacity(n.saturating_sub(1));
    for _ in 1..n {
        others.push(reuseport_listener(bound)?.into_std()?);
    }
    Ok((first, others))
}

/// A socket bound to `addr` like `TcpListener::bind` binds (`SO_REUSEADDR`), not listening.
fn plain_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

fn new_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

#[cfg(target_os = "linux")]
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

// Elsewhere SO_REUSEPORT does not spread connections (or is missing): the command runs one
// listener on a multi-thread runtime instead (`PER_WORKER_LISTENERS`), so this is not reached.
#[cfg(not(target_os = "linux"))]
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Workers 1.. running on their threads.
pub(super) struct Pool {
    /// One per worker thread: said when its accept loop stopped.
    stopped: Vec<oneshot::Receiver<()>>,
    /// Cancelled once the whole drain is over: then each worker thread drops its runtime.
    /// Until then the runtimes live on, since a connection on one worker may be using what
    /// another's runtime drives (a pooled upstream connection, a tunnel).
    release: CancellationToken,
}

/// Starts one thread per listener, each with its own current-thread runtime running an
/// accept loop on it; returns once every worker has its listener registered and its thread
/// named, so that "listening" is said only when every worker accepts (and a worker that
/// cannot register its listener stops the start instead of leaving its share unserved).
pub(super) async fn spawn(
    listeners: Vec<std::net::TcpListener>,
    shared: &Shared,
) -> std::io::Result<Pool> {
    let release = CancellationToken::new();
    let mut stopped = Vec::with_capacity(listeners.len());
    let mut ready = Vec::with_capacity(listeners.len());
    // Built here, so that a runtime that cannot start stops the start.
    let mut runtimes = Vec::with_capacity(listeners.len());
    for _ in &listeners {
        runtimes.push(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
    }
    for (i, (listener, rt)) in listeners.into_iter().zip(runtimes).enumerate() {
        let worker = i + 1;
        let (done, rx) = oneshot::channel();
        let (registered, is_ready) = oneshot::channel();
        let shared = shared.clone();
        let release_this = release.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rcshim-worker-{worker}"))
            .spawn(move || {
                run(
                    rt,
                    listener,
                    shared,
                    Worker {
                        index: worker,
                        registered,
                        done,
                    },
                    release_this,
                )
            });
        if let Err(e) = spawned {
            // The threads already started stop: their accept loops with the caller's shutdown
            // (`start` cancels it on this error), their runtimes with the release.
            release.cancel();
            return Err(e);
        }
        stopped.push(rx);
        ready.push(is_ready);
    }
    for is_ready in ready {
        // A thread that ended before saying anything panicked: as a failed registration.
        let said = is_ready.await.unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "a worker thread ended before it started",
            ))
        });
        if let Err(e) = said {
            release.cancel();
            return Err(e);
        }
    }
    Ok(Pool { stopped, release })
}

/// What one worker thread reports back to the start.
struct Worker {
    /// Its number in logs (the caller's runtime is worker 0).
    index: usize,
    /// Said once its listener is registered on its runtime (or could not be).
    registered: oneshot::Sender<std::io::Result<()>>,
    /// Said when its accept loop stopped.
    done: oneshot::Sender<()>,
}

/// One worker thread: its accept loop, then its runtime stays up until the release.
fn run(
    rt: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Shared,
    worker: Worker,
    release: CancellationToken,
) {
    rt.block_on(async {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                let _ = worker.registered.send(Ok(()));
                accept_loop(l, &shared, worker.index).await
            }
            Err(e) => {
                tracing::error!(worker = worker.index, error = %e, "worker listener not registered");
                let _ = worker.registered.send(Err(e));
            }
        }
        let _ = worker.done.send(());
        // Stop with the release, or with a start that failed before any drain began.
        release.cancelled().await;
    });
    // Tasks still open past `shutdown_grace` are dropped, as the single runtime drops them;
    // nothing waits on blocking work left behind.
    rt.shutdown_background();
}

impl Pool {
    /// Worker 0's accept loop on the caller's runtime, then, once every worker's loop has
    /// stopped, the one drain (bounded by `shutdown_grace`) and the audit trail's close; then
    /// the worker runtimes are let go.
    pub(super) async fn serve(self, listener: TcpListener, shared: Shared) {
        // The runtimes go when this ends, however it ends.
        let _release = self.release.clone().drop_guard();
        accept_loop(listener, &shared, 0).await;
        for rx in self.stopped {
            let _ = rx.await;
        }
        drain(&shared).await;
    }
}
