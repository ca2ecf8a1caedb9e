//! The admin listener: `/livez`, `/readyz`, `/metrics`, on its own address so that probes and
//! scrapes never mix with client traffic.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::state::AppState;

/// `/readyz` wants an upstream answer at least this recent (or a successful probe).
const UPSTREAM_FRESH: Duration = Duration::from_secs(30);

/// Serves the admin endpoints for the life of the process (it stays up while draining so that
/// `/readyz` can say 503).
pub async fn serve(listener: TcpListener, app: Arc<AppState>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(answer(&app, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
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
        "/metrics" => text(
            StatusCode::OK,
            app.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
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
    let Ok(uri) = gen.upstream.uri(&path) else {
        return false;
    };
    let mut req = Request::new(ProxyBody::empty());
    *req.uri_mut() = uri;
    if let Ok(h) = HeaderValue::from_str(gen.upstream.authority().as_str()) {
        req.headers_mut().insert(header::HOST, h);
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(2), gen.upstream.send(req)).await,
        Ok(Ok(_))
    )
}
