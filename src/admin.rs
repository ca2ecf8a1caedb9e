//! The admin listener: `/livez`, `/readyz`, `/metrics`, on its own address so that probes and
//! scrapes never mix with client traffic.
//!
//! It can never starve the client port: at most [`ADMIN_MAX_CONNECTIONS`] connections at once
//! (the rest wait in the kernel backlog, holding no descriptor of the process), each bound by
//! the same head timeout as client connections (and `idle_timeout` for HTTP/2), and failing
//! accepts back off as on the client port.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::connection::clock::{AcceptBackoff, Tracked};
use crate::connection::drive;
use crate::connection::sniff::{ConnFlags, Sniffer};
use crate::state::AppState;
use crate::upstream::request;

/// `/readyz` wants an upstream answer at least this recent (or a successful probe).
const UPSTREAM_FRESH: Duration = Duration::from_secs(30);

/// Admin connections served at once. Probes and a scraper or two need a handful; the cap keeps
/// a flood of slow admin connections from taking the process's file descriptors.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoints for the life of the process (it stays up while draining so that
/// `/readyz` can say 503).
pub async fn serve(listener: TcpListener, app: Arc<AppState>) {
    let config = app.generation().config.clone();
    let (head_timeout, idle_timeout) = (
        config.server.header_read_timeout,
        config.server.idle_timeout,
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let limit = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    // The admin listener outlives a drain: nothing cancels this, nothing sets that.
    let never = CancellationToken::new();
    static NEVER_DRAINING: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    let mut backoff = AcceptBackoff::new("admin");
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tokio::time::sleep(backoff.failed(&e, &app.metrics)).await;
                continue;
            }
        };
        backoff.succeeded();
        let flags = Arc::new(ConnFlags::new(head_timeout, idle_timeout));
        let svc_flags = flags.clone();
        let app = app.clone();
        let svc = service_fn(move |req| {
            let in_flight = svc_flags.clock.request_started();
            let app = app.clone();
            async move {
                let resp = answer(&app, req).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        let io = TokioIo::new(Sniffer::new(stream, flags.clone()));
        let conn = builder.serve_connection(io, svc).into_owned();
        let never = never.clone();
        tokio::spawn(async move {
            drive(conn, &flags, &never, &NEVER_DRAINING, peer, None).await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn answer(app: &AppState, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", "text/plain");
    }
    match req.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => {
            if app.draining.load(Ordering::SeqCst) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain");
            }
            // Answers that need a record would be refused (deny) or unrecorded (allow).
            if app.audit.as_ref().is_some_and(|t| t.is_failing()) {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit trail cannot be written\n",
                    "text/plain",
                );
            }
            if upstream_fresh(app) || probe_upstream(app).await {
                text(StatusCode::OK, "ready\n", "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream not answering\n",
                    "text/plain",
                )
            }
        }
        "/metrics" => {
            let mut body = app.metrics.render();
            // The audit trail's counters and fsync histogram (`audit::stats`), when it is on.
            if let Some(trail) = &app.audit {
                trail.stats().render(&mut body);
            }
            #[cfg(feature = "count-allocations")]
            render_allocations(&mut body);
            text(
                StatusCode::OK,
                body,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// The bench build's allocation counter (feature `count-allocations`, see `countalloc`).
#[cfg(feature = "count-allocations")]
fn render_allocations(body: &mut String) {
    use std::fmt::Write;
    let _ = write!(
        body,
        "# HELP rcshim_allocations_total Allocation calls since start (bench builds only).\n\
         # TYPE rcshim_allocations_total counter\n\
         rcshim_allocations_total {}\n",
        countalloc::allocations()
    );
}

fn upstream_fresh(app: &AppState) -> bool {
    app.generation()
        .upstream
        .last_answer_age()
        .is_some_and(|age| age < UPSTREAM_FRESH)
}

/// Asks the upstream's `GET /api/info` (any answer counts as alive).
async fn probe_upstream(app: &AppState) -> bool {
    let gen = app.generation();
    let path = format!("{}/api/info", gen.upstream.path_prefix);
    let Ok(req) = request::unattended(&gen.upstream, &path, http::HeaderMap::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), gen.upstream.send(req)).await,
        Ok(Ok(_))
    )
}
