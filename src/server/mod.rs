//! Listeners and the request entry point: accept with a connection cap, serve HTTP/1.1 and
//! HTTP/2 cleartext with upgrades, enforce the head limits, route each request down one of
//! the three roads, log and count it; drain gracefully; swap configurations on reload.

pub mod sniff;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::dm_history::{self, errors::ApiError, DmHistory};
use crate::metrics::{Metrics, RouteClass};
use crate::proxy::{self, headers, Upstream};
use crate::read_cap::ReadCap;
use crate::respond;
use crate::route::{self, Route};
use crate::state::{AppState, Generation, LogFacts, RequestCtx};
use sniff::{ConnFlags, Sniffer};

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
    let dm = Arc::new(DmHistory::new(
        config.clone(),
        upstream.clone(),
        metrics.clone(),
        previous.map(|p| p.dm.as_ref()),
    )?);
    Ok(Generation {
        config,
        upstream,
        dm,
    })
}

fn reload(app: &AppState, config: Config) -> Result<(), String> {
    let current = app.generation();
    let gen = build_generation(config, &app.metrics, Some(&current))?;
    app.current.store(Arc::new(gen));
    Ok(())
}

/// Binds the listeners and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let listen = config.server.listen;
    let admin_listen = config.admin.listen;
    let gen = build_generation(config, &metrics, None).map_err(StartError::Setup)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let admin_listener = match admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let app = Arc::new(AppState {
        current: ArcSwap::from_pointee(gen),
        metrics,
        tunnels: TaskTracker::new(),
        draining: AtomicBool::new(false),
        started: Instant::now(),
    });
    let shutdown = CancellationToken::new();
    if let Some(l) = admin_listener {
        tokio::spawn(crate::admin::serve(l, app.clone()));
    }
    let done = tokio::spawn(serve(listener, app.clone(), shutdown.clone()));
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

/// HTTP/2 per-stream buffer toward a slow reader and receive window (see `builder`).
const H2_STREAM_BUF: usize = 128 * 1024;

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let max_head = config.server.max_header_bytes as usize;
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
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

async fn serve(listener: TcpListener, app: Arc<AppState>, shutdown: CancellationToken) {
    let config = app.generation().config.clone();
    let builder = builder(&config);
    let limit = Arc::new(Semaphore::new(
        config
            .server
            .max_connections
            .min(Semaphore::MAX_PERMITS as u64) as usize,
    ));
    let graceful = GracefulShutdown::new();
    loop {
        // Take a slot before accepting: past the cap, connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let flags = Arc::new(ConnFlags::default());
        let io = TokioIo::new(Sniffer::new(ReadCap::new(stream), flags.clone()));
        let conn_app = app.clone();
        let svc = service_fn(move |req| {
            let app = conn_app.clone();
            let flags = flags.clone();
            async move { Ok::<_, Infallible>(handle(app, peer, flags, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        let conn = graceful.watch(conn);
        let metrics = app.metrics.clone();
        tokio::spawn(async move {
            let _open = metrics.connection_opened();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = app.generation().config.server.shutdown_grace;
    tracing::info!(?grace, "draining");
    app.tunnels.close();
    let drained = tokio::time::timeout(grace, async {
        graceful.shutdown().await;
        app.tunnels.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("shutdown_grace elapsed with requests or tunnels still open"),
    }
}

/// Refuses heads the upstream must never see: a `Content-Length` with a `Transfer-Encoding`
/// (request smuggling), more than one `Host`, and heads over `max_header_bytes`.
fn check_head(req: &Request<Incoming>, flags: &ConnFlags, config: &Config) -> Option<ApiError> {
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && (req.headers().contains_key(header::CONTENT_LENGTH)
            || flags.cl_te_conflict.load(Ordering::Relaxed))
    {
        return Some(ApiError::bad_request(
            "The request has both Content-Length and Transfer-Encoding",
        ));
    }
    // RFC 9112 §3.2: more than one Host line is a 400 (proxies and servers may each pick a
    // different one).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Some(ApiError::bad_request(
            "The request has more than one Host header",
        ));
    }
    let mut size = req.method().as_str().len()
        + req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(1)
        + 12;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    if size as u64 > config.server.max_header_bytes {
        return Some(ApiError::header_too_large());
    }
    None
}

async fn handle(
    app: Arc<AppState>,
    peer: SocketAddr,
    flags: Arc<ConnFlags>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let gen = app.generation();
    let config = &gen.config;
    let trusted = &config.server.trusted_proxies;
    let ctx = RequestCtx {
        peer,
        client_ip: headers::client_ip(peer.ip(), req.headers(), trusted),
        peer_trusted: headers::is_trusted(peer.ip(), trusted),
        request_id: headers::request_id(req.headers()),
    };
    // The access log's copies of the method and path, only when that log is on (a hot path).
    let logged = access_log::enabled().then(|| (req.method().clone(), req.uri().path().to_owned()));

    let (class, mut resp) = if let Some(err) = check_head(&req, &flags, config) {
        (RouteClass::Passthrough, respond::error(&err))
    } else {
        match route::classify(
            req.uri().path(),
            &config.upstream.path_prefix,
            config.policy.guard_related_endpoints,
        ) {
            Route::Passthrough => {
                let class = if req.version() == Version::HTTP_11
                    && headers::upgrade_protocol(req.headers()).is_some()
                {
                    flags.off.store(true, Ordering::Relaxed);
                    RouteClass::Websocket
                } else {
                    RouteClass::Passthrough
                };
                (class, proxy::forward(&app, &gen.upstream, req, &ctx).await)
            }
            Route::DmHistory => (
                RouteClass::Intercepted,
                dm_history::handle(&gen, req, &ctx).await,
            ),
            Route::Guarded(_) => (
                RouteClass::Guarded,
                dm_history::guard(&app, &gen, req, &ctx).await,
            ),
        }
    };
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let elapsed = start.elapsed();
    app.metrics.request(class, resp.status().as_u16(), elapsed);
    let facts = resp
        .extensions_mut()
        .remove::<LogFacts>()
        .unwrap_or_default();
    if let Some((method, path)) = &logged {
        access_log::log(&access_log::Entry {
            request_id: &ctx.request_id,
            client: ctx.client_ip,
            method: method.as_str(),
            path,
            status: resp.status().as_u16(),
            bytes: resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            duration: elapsed,
            route: class,
            facts: &facts,
        });
    }
    resp
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
