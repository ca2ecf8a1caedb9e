//! Workers in nginx's shape: each its own `SO_REUSEPORT` listener on the client address and
//! its own current-thread runtime, so that a connection's tasks (the client side, its upstream
//! connection) never wake another thread and the kernel spreads new connections over the
//! listeners. Worker 0 runs on the caller's runtime; workers 1.. each on an OS thread.

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{accept_loop, drain, Shared};

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
