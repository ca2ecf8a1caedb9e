//! Listeners and the request entry point: accept with a connection cap, serve HTTP/1.1 and
//! HTTP/2 cleartext with upgrades, enforce the head limits, route each request down one of
//! the three roads, log and count it; drain gracefully; swap configurations on reload.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod dispatch;
mod listen;
mod workers;

use crate::audit::{AuditError, AuditTrail};
use crate::config::Config;
use crate::connection::clock::{AcceptBackoff, ConnSlot, Tracked};
use crate::connection::drive;
use crate::connection::front;
use crate::connection::sniff::{ConnFlags, Sniffer};
use crate::dm_history::DmHistory;
use crate::metrics::Metrics;
use crate::read_cap::ReadCap;
use crate::state::{AppState, Generation};
use crate::upstream::{self, Upstream};

/// Why the shim could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    /// `audit.enabled` and the trail cannot be opened (unreadable or unwritable path, a
    /// missing HMAC key): a start-up failure, exit 1 with the reason.
    #[error("{0}")]
    Audit(#[from] AuditError),
}

/// A running shim.
pub struct Running {
    /// The client-facing address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The admin address, when the admin listener is on.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<AppState>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts draining: stop accepting, let in-flight requests and tunnels finish up to
    /// `shutdown_grace`. Await [`Running::wait`] for the end.
    pub fn shutdown(&self) {
        self.app.draining.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`Running::shutdown`]).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// Replaces policy, cache and rate-limit settings and the upstream with those of `config`,
    /// for new requests. Listener addresses are not changed.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        reload(&self.app, config)
    }
}

/// Builds a configuration generation, reusing parts of `previous` whose settings are unchanged
/// (so a reload that does not touch the cache keeps its entries).
pub fn build_generation(
    config: Config,
    metrics: &Metrics,
    previous: Option<&Generation>,
) -> Result<Generation, String> {
    let upstream = match previous {
        Some(p) if p.config.upstream == config.upstream => p.upstream.clone(),
        _ => Upstream::new_after(&config.upstream, previous.map(|p| &p.upstream))?,
    };
    let config = Arc::new(config);
    let endpoint = Arc::new(DmHistory::new(
        config.clone(),
        upstream.clone(),
        metrics.clone(),
        previous.map(|p| p.endpoint.as_ref()),
    )?);
    // The TLS pair is re-read on every reload (a renewal rewrites the files, not the config);
    // one that does not load refuses the whole generation, so the old pair stays.
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(front::load_tls(t)?)),
        None => None,
    };
    Ok(Generation {
        config,
        upstream,
        endpoint,
        tls,
    })
}

fn reload(app: &AppState, config: Config) -> Result<(), String> {
    let current = app.generation();
    let gen = build_generation(config, &app.metrics, Some(&current))?;
    set_cert_expiry(&app.metrics, &gen);
    app.current.store(Arc::new(gen));
    Ok(())
}

/// Points the certificate-expiry gauge at the generation's certificate.
fn set_cert_expiry(metrics: &Metrics, gen: &Generation) {
    let not_after = gen.tls.as_ref().map(|t| t.not_after).unwrap_or(0);
    metrics
        .front_door()
        .cert_not_after
        .store(not_after, Ordering::Relaxed);
}

/// Binds the listeners and starts serving in the background, on the caller's runtime.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, 1).await
}

/// Whether [`start_workers`] can give each worker its own listener (`SO_REUSEPORT` with the
/// kernel spreading connections over the listeners: Linux). Elsewhere the command runs one
/// listener on a multi-thread runtime instead.
pub const PER_WORKER_LISTENERS: bool = cfg!(target_os = "linux");

/// Like [`start`], with `workers` workers in nginx's shape: each its own listener on
/// `server.listen` (`SO_REUSEPORT`) and its own connections on a current-thread runtime.
/// Worker 0 runs on the caller's runtime (with the admin listener), workers 1.. each on an OS
/// thread of their own. One `server.max_connections` for them all, one drain.
pub async fn start_workers(config: Config, workers: usize) -> Result<Running, StartError> {
    start_with(config, workers.max(1)).await
}

async fn start_with(config: Config, workers: usize) -> Result<Running, StartError> {
    raise_nofile_limit();
    let metrics = Metrics::new();
    let listen = config.server.listen;
    let admin_listen = config.admin.listen;
    let gen = build_generation(config, &metrics, None).map_err(StartError::Setup)?;
    set_cert_expiry(&metrics, &gen);
    let bind_error = |source| StartError::Bind {
        addr: listen,
        source,
    };
    let (listener, others) = if workers > 1 {
        listen::bind_reuseport(listen, workers).map_err(bind_error)?
    } else {
        (listen::bind_one(listen).map_err(bind_error)?, Vec::new())
    };
    let addr = listener.local_addr().map_err(bind_error)?;
    let admin_listener = match admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Last of what can fail: a start that fails after this would leave the writer closing
    // in the background, and a retry on the same path would find it still open.
    let audit = open_audit(&gen.config).await?;

    let app = Arc::new(AppState {
        current: ArcSwap::from_pointee(gen),
        metrics,
        tunnels: TaskTracker::new(),
        draining: AtomicBool::new(false),
        started: Instant::now(),
        audit,
    });
    let shutdown = CancellationToken::new();
    if let Some(l) = admin_listener {
        tokio::spawn(crate::admin::serve(l, app.clone()));
    }
    let shared = Shared {
        app: app.clone(),
        shutdown: shutdown.clone(),
        limit: connection_limit(&app),
        conns: TaskTracker::new(),
    };
    let done = if others.is_empty() {
        tokio::spawn(serve(listener, shared))
    } else {
        match workers::spawn(others, &shared).await {
            Ok(pool) => tokio::spawn(pool.serve(listener, shared)),
            Err(e) => {
                shutdown.cancel();
                return Err(StartError::Setup(format!("cannot start the workers: {e}")));
            }
        }
    };
    tracing::info!(
        %addr,
        admin = admin_addr.map(|a| a.to_string()).unwrap_or_default(),
        "rocketchat-shim listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        app,
        shutdown,
        done,
    })
}

/// Opens the audit trail when `audit.enabled` (blocking file I/O, so off the runtime's
/// threads): once per process, before the listeners, so that a path that cannot be read or
/// written stops the start with its reason instead of failing the first request.
async fn open_audit(config: &Config) -> Result<Option<AuditTrail>, StartError> {
    if !config.audit.enabled {
        return Ok(None);
    }
    let audit = config.audit.clone();
    let trail = tokio::task::spawn_blocking(move || AuditTrail::open(&audit))
        .await
        .map_err(|e| AuditError::Spawn(e.to_string()))??;
    tracing::info!(path = %trail.path().display(), instance = trail.instance(), "audit trail open");
    Ok(Some(trail))
}

/// HTTP/2 per-stream buffer toward a slow reader and receive window (see `builder`).
const H2_STREAM_BUF: usize = 128 * 1024;

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let max_head = config.server.max_header_bytes as usize;
    b.http1()
        // The head deadline is the connection clock's (`connection/clock.rs`), which is
        // stricter (it runs from the end of the previous response, not from the first byte of
        // the next head); hyper's own would arm (and allocate) one more timer per request.
        .header_read_timeout(None)
        .keep_alive(true)
        // Heads above max_header_bytes get the shim's own JSON 431 (see `check_head`); hyper's
        // buffer is larger so that it only cuts grossly oversized heads itself (bare 431).
        // It does not size what a slow peer holds: reads are capped (`read_cap`) and bodies go
        // on in small pieces (`body`), so the write queue's 16 entries bound it.
        .max_buf_size((max_head * 2).max(400 * 1024));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_head.min(u32::MAX as usize) as u32)
        // Per stream, what the shim buffers toward a slow reader and what a client may send
        // before the shim has passed it on (hyper's defaults: 400 KiB and 1 MiB).
        .max_send_buf_size(H2_STREAM_BUF)
        .initial_stream_window_size(H2_STREAM_BUF as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so that the configured caps, not a low
/// default soft limit, decide how many connections the process can hold.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}

/// What every worker's accept loop shares: one connection cap, one drain.
#[derive(Clone)]
struct Shared {
    app: Arc<AppState>,
    shutdown: CancellationToken,
    /// `server.max_connections` across all workers.
    limit: Arc<Semaphore>,
    /// Every client connection task, whichever worker's runtime it runs on.
    conns: TaskTracker,
}

fn connection_limit(app: &AppState) -> Arc<Semaphore> {
    let max = app.generation().config.server.max_connections;
    Arc::new(Semaphore::new(
        max.min(Semaphore::MAX_PERMITS as u64) as usize
    ))
}

/// One listener on the caller's runtime: accept until shutdown, then drain.
async fn serve(listener: TcpListener, shared: Shared) {
    accept_loop(listener, &shared, 0).await;
    drain(&shared).await;
}

/// Accepts client connections on `listener` until shutdown; each connection's task runs on
/// the runtime this loop runs on (worker `worker`'s).
async fn accept_loop(listener: TcpListener, shared: &Shared, worker: usize) {
    let Shared {
        app,
        shutdown,
        limit,
        conns,
    } = shared;
    let config = app.generation().config.clone();
    let builder = Arc::new(builder(&config));
    let (head_timeout, idle_timeout) = (
        config.server.header_read_timeout,
        config.server.idle_timeout,
    );
    let mut backoff = AcceptBackoff::new("client");
    loop {
        // Wait for a free slot before accepting: past the cap, connections wait in the kernel
        // backlog. The slot is not held while waiting on the listener: with several workers, an
        // idle worker holding one would keep it from a connection on another's listener.
        tokio::select! {
            p = limit.acquire() => match p { Ok(p) => drop(p), Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin (logged once a burst).
                    let wait = backoff.failed(&e, &app.metrics);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        backoff.succeeded();
        // Another worker may have taken the slot since (never with one worker): then this
        // connection waits for the next one, accepted but not served.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            },
        };
        // Which worker took it (tests show the spread over workers with it).
        tracing::debug!(worker, %peer, "client connection accepted");
        let _ = stream.set_nodelay(true);
        // The slot lives as long as the connection task or a tunnel born from it.
        let slot = ConnSlot::new(permit, &app.metrics);
        // The PROXY header, the TLS handshake and the first head share this one deadline.
        let deadline = tokio::time::Instant::now() + head_timeout;
        let flags = Arc::new(ConnFlags::new(head_timeout, idle_timeout));
        let door = front_door(app);
        let conn_app = app.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let opened = tokio::select! {
                r = front::open(stream, peer, &door, deadline, &conn_app.metrics) => r,
                _ = shutdown.cancelled() => return,
            };
            let accepted_from = peer;
            let (io, peer) = match opened {
                Ok(x) => x,
                Err(why) => {
                    // Closed without an answer: there is no protocol yet to answer in.
                    tracing::debug!(%peer, reason = ?why, "client connection refused at the front door");
                    return;
                }
            };
            let https = io.is_tls();
            // A PROXY header named another source: that is the client, for everything (its own
            // forwarding headers are not believed, however trusted its address looks).
            let proxied = peer != accepted_from;
            let io = TokioIo::new(Sniffer::new(ReadCap::new(io), flags.clone()));
            let peer_ip = crate::headers::canonical_ip(peer.ip());
            let info = Arc::new(dispatch::ConnInfo {
                peer,
                flags: flags.clone(),
                https,
                proxied,
                local: upstream::local::for_connection(),
                peer_ip,
                peer_value: crate::headers::ip_value(peer_ip),
            });
            let local = info.local.clone();
            let drive_app = conn_app.clone();
            let svc_slot = slot.clone();
            let svc = service_fn(move |mut req: Request<Incoming>| {
                // The head is here: the connection is busy until the response body is dropped.
                let in_flight = info.flags.clock.request_started();
                if req.headers().contains_key(header::UPGRADE) {
                    req.extensions_mut().insert(svc_slot.clone());
                }
                let app = conn_app.clone();
                let info = info.clone();
                async move {
                    let resp = dispatch::dispatch(app, &info, req).await;
                    Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
                }
            });
            let conn = builder.serve_connection_with_upgrades(io, svc);
            drive(conn, &flags, &shutdown, &drive_app.draining, peer, Some(&*local)).await;
            drop(slot);
        });
    }
    drop(listener);
}

/// After every accept loop stopped: let the connections and tunnels finish (up to
/// `shutdown_grace`), then close the audit trail, once.
async fn drain(shared: &Shared) {
    let Shared { app, conns, .. } = shared;
    let grace = app.generation().config.server.shutdown_grace;
    tracing::info!(?grace, "draining");
    conns.close();
    app.tunnels.close();
    let drained = tokio::time::timeout(grace, async {
        conns.wait().await;
        app.tunnels.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("shutdown_grace elapsed with requests or tunnels still open"),
    }
    // After the drain: what the finished requests queued is written, then the file closes.
    if let Some(trail) = &app.audit {
        trail.clone().close().await;
        tracing::info!("audit trail closed");
    }
}

/// The front door a connection accepted now goes through (from the current generation, so a
/// reload's new pair serves new connections).
fn front_door(app: &AppState) -> front::FrontDoor {
    let gen = app.generation();
    let proxy_protocol = gen.config.server.proxy_protocol;
    front::FrontDoor {
        tls: gen.tls.clone(),
        proxy_protocol,
        // Only read with the PROXY protocol on (no allocation per connection otherwise).
        trusted: if proxy_protocol {
            gen.config.server.trusted_proxies.clone()
        } else {
            Vec::new()
        },
    }
}

/// Re-reads the config file at `path` and applies it; logs and counts the outcome.
pub fn reload_from(app: &AppState, path: &Path) -> Result<(), String> {
    let outcome = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|c| reload(app, c));
    match &outcome {
        Ok(()) => {
            app.metrics
                .counters()
                .reloads_ok
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            app.metrics
                .counters()
                .reloads_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
        }
    }
    outcome
}
