//! The HTTP side of the stand-in: the accept loop, HTTP/1.1 + HTTP/2 (cleartext) connections
//! with upgrades, request recording, injected faults and delays, the `/_standin/` test
//! helpers, the WebSocket echo on `/websocket` and `/sockjs/...`, and the dispatch of `/api`
//! paths to [`crate::api`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{stream, SinkExt, StreamExt};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use crate::data::State;
use crate::{api, Fault, RecordedRequest};

/// Error type of response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How much of a request body is kept in memory for the handlers (the rest is only counted).
const MAX_KEPT_BODY: usize = 1 << 20;
/// Size of the chunks `/_standin/bytes/<n>` sends.
const BYTES_CHUNK: usize = 251 * 256;
/// Non-HTTP bytes sent by [`Fault::Garbage`].
const GARBAGE: &[u8] = b"\x00\x01\x02 this is not HTTP \xff\xfe\xfd\r\n\r\n\x16\x03\x01 garbage";

/// State shared by the accept loop, every connection and the [`crate::Standin`] handle.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub log: Mutex<Vec<RecordedRequest>>,
    pub fault: Mutex<Fault>,
    pub delays: Mutex<HashMap<String, Duration>>,
    /// Route by what a lenient front router would pass on (see [`crate::front_router`]).
    pub front_router: std::sync::atomic::AtomicBool,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(state: State) -> Self {
        Shared {
            state: Mutex::new(state),
            log: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            delays: Mutex::new(HashMap::new()),
            front_router: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self, r: RecordedRequest) -> usize {
        let mut log = lock(&self.log);
        log.push(r);
        log.len() - 1
    }

    fn set_body_len(&self, index: usize, len: u64) {
        if let Some(r) = lock(&self.log).get_mut(index) {
            r.body_len = len;
        }
    }

    fn fault(&self) -> Fault {
        *lock(&self.fault)
    }

    fn delay(&self, path: &str) -> Option<Duration> {
        lock(&self.delays).get(path).copied()
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped); then every connection
/// task is aborted.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "standin: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<()>) {
    match shared.fault() {
        Fault::Garbage => return answer_garbage(stream, &shared).await,
        // The response is cut by an error in its body; with SO_LINGER 0 the close is a reset.
        Fault::ResetMidBody => {
            let _ = stream.set_zero_linger();
        }
        _ => {}
    }
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| handle(req, shared.clone(), stop.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "standin: connection ended with an error");
    }
}

/// Reads (most of) a request head, records it, answers with non-HTTP bytes and closes.
async fn answer_garbage(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&tmp[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
                        break;
                    }
                }
            }
        }
    })
    .await;
    if let Some(r) = parse_raw_head(&buf) {
        shared.record(r);
    }
    let _ = stream.write_all(GARBAGE).await;
    let _ = stream.shutdown().await;
}

/// A minimal HTTP/1 request-head parser, used only where hyper does not see the request.
fn parse_raw_head(buf: &[u8]) -> Option<RecordedRequest> {
    let text = String::from_utf8_lossy(buf);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let path = target.split('?').next().unwrap_or_default().to_string();
    Some(RecordedRequest {
        method,
        target,
        path,
        headers,
        body_len: 0,
    })
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn response(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// A JSON response; `api` adds Restivus' `Cache-Control: no-store` and `Pragma: no-cache`.
fn json_response(status: StatusCode, body: &Value, api: bool) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = response(status, full(bytes));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if api {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    }
    r
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> Response<Body> {
    let mut r = response(status, full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Reads a whole request body, keeping at most [`MAX_KEPT_BODY`] bytes; returns the kept
/// bytes and the total length.
async fn read_body(mut body: Incoming) -> (Bytes, u64) {
    let mut kept = BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            let room = MAX_KEPT_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    (kept.freeze(), total)
}

/// The repeating pattern of `/_standin/bytes/<n>`: byte `i` is `i % 251`.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..BYTES_CHUNK + 251)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// `n` pattern bytes starting at stream position `pos`, `n <= BYTES_CHUNK`.
fn pattern_slice(pos: u64, n: usize) -> Bytes {
    let off = (pos % 251) as usize;
    pattern().slice(off..off + n)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: watch::Receiver<()>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let target = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let path = if shared
        .front_router
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        crate::front_router::rewrite(parts.uri.path())
    } else {
        parts.uri.path().to_string()
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let is_upload = path == "/_standin/upload" && (method == Method::POST || method == Method::PUT);
    let (body_bytes, body_len, pending_body) = if is_upload {
        (Bytes::new(), 0, Some(body))
    } else {
        let (b, n) = read_body(body).await;
        (b, n, None)
    };
    let index = shared.record(RecordedRequest {
        method: method.as_str().to_string(),
        target: target.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body_len,
    });

    let fault = shared.fault();
    match fault {
        Fault::HangBeforeHead => {
            let mut stop = stop;
            let _ = stop.changed().await;
            return Ok(response(StatusCode::SERVICE_UNAVAILABLE, empty()));
        }
        Fault::SlowHead(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    if let Some(d) = shared.delay(&path).filter(|d| !d.is_zero()) {
        tokio::time::sleep(d).await;
    }
    match fault {
        Fault::ResetMidBody => return Ok(cut_response(1_000_000, 1000)),
        Fault::CloseAfterHead => return Ok(cut_response(1000, 0)),
        _ => {}
    }

    let mut resp = if let Some(body) = pending_body {
        upload(body, &shared, index).await
    } else if path == "/_standin/status/101" {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        lenient_switch(&parts.headers, &query, on_upgrade, shared.clone(), stop)
    } else if path.starts_with("/_standin/") {
        helper(&method, &path, &target, &headers, body_len)
    } else if path == "/websocket" || path.starts_with("/sockjs/") {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        websocket(&method, &parts.headers, on_upgrade, stop)
    } else if api::api_segments(&path).is_some() {
        let answer = {
            let mut state = lock(&shared.state);
            api::handle(
                &mut state,
                &method,
                &path,
                &query,
                &parts.headers,
                &body_bytes,
            )
        };
        let mut r = json_response(answer.status, &answer.body, true);
        for (name, value) in answer.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().append(name, v);
            }
        }
        r
    } else if method == Method::GET || method == Method::HEAD {
        // Meteor serves its single-page application for any other path.
        text_response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!DOCTYPE html>\n<html><head><title>Rocket.Chat</title></head><body></body></html>\n",
        )
    } else {
        text_response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "Not Found",
        )
    };

    if method == Method::HEAD {
        if let Some(len) = resp.body().size_hint().exact() {
            resp.headers_mut()
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
        *resp.body_mut() = empty();
    }
    Ok(resp)
}

/// A response that announces `content_length` bytes, sends `sent` of them and then fails,
/// which makes hyper drop the connection (a reset when SO_LINGER is 0).
fn cut_response(content_length: u64, sent: usize) -> Response<Body> {
    let frames = stream::unfold(0u8, move |step| async move {
        match step {
            0 if sent > 0 => Some((Ok(Frame::data(pattern_slice(0, sent.min(BYTES_CHUNK)))), 1)),
            0 | 1 => {
                // Let hyper flush what it has before the connection is torn down.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Err(BoxError::from("standin: injected fault")), 2))
            }
            _ => None,
        }
    });
    let mut r = response(StatusCode::OK, StreamBody::new(frames).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(content_length));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// `POST|PUT /_standin/upload`: hashes the body as it streams in.
async fn upload(mut body: Incoming, shared: &Shared, index: usize) -> Response<Body> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    total += data.len() as u64;
                }
            }
            Err(e) => {
                shared.set_body_len(index, total);
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": e.to_string(), "bytes": total}),
                    false,
                );
            }
        }
    }
    shared.set_body_len(index, total);
    json_response(
        StatusCode::OK,
        &json!({"bytes": total, "sha256": api::hex(&hasher.finalize())}),
        false,
    )
}

/// The `/_standin/` helpers other than upload.
fn helper(
    method: &Method,
    path: &str,
    target: &str,
    headers: &[(String, String)],
    body_len: u64,
) -> Response<Body> {
    let rest = &path["/_standin/".len()..];
    let get = method == Method::GET || method == Method::HEAD;
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "no such stand-in helper"}),
            false,
        )
    };
    if let Some(n) = rest.strip_prefix("bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad byte count"}),
                false,
            );
        };
        if !get {
            return not_found();
        }
        let chunks = stream::unfold(0u64, move |pos| async move {
            if pos >= n {
                return None;
            }
            let len = (n - pos).min(BYTES_CHUNK as u64) as usize;
            Some((
                Ok::<_, BoxError>(Frame::data(pattern_slice(pos, len))),
                pos + len as u64,
            ))
        });
        let mut r = response(StatusCode::OK, StreamBody::new(chunks).boxed_unsync());
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }
    if let Some(code) = rest.strip_prefix("status/") {
        let Some(status) = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|s| s.as_u16() >= 200)
        else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad status code"}),
                false,
            );
        };
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return response(status, empty());
        }
        return json_response(status, &json!({"status": status.as_u16()}), false);
    }
    match rest {
        "echo" => json_response(
            StatusCode::OK,
            &json!({"method": method.as_str(), "target": target, "headers": headers, "body_len": body_len}),
            false,
        ),
        "cookies" if get => {
            let mut r = json_response(StatusCode::OK, &json!({"cookies": 3}), false);
            for c in ["a=1", "b=2", "c=3"] {
                r.headers_mut()
                    .append(SET_COOKIE, HeaderValue::from_static(c));
            }
            r
        }
        "chunked" if get => {
            let chunks = stream::unfold(0u32, |i| async move {
                if i >= 5 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some((
                    Ok::<_, BoxError>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
                    i + 1,
                ))
            });
            let mut r = response(StatusCode::OK, StreamBody::new(chunks).boxed_unsync());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        _ => not_found(),
    }
}

/// `/_standin/status/101`: a careless upstream that answers `101 Switching Protocols` whatever
/// was asked. `Upgrade` is the `upgrade` query parameter (default `websocket`);
/// `Sec-WebSocket-Accept` is sent only with `accept=good` (derived from the request's key) or
/// `accept=<value>` (sent as is). After the 101 it goes on reading HTTP/1 requests on the same
/// connection, recorded like any other, as a lenient server would: the bytes a client sends
/// after such a 101 reach the application as requests unless the proxy refuses to tunnel.
fn lenient_switch(
    headers: &http::HeaderMap,
    query: &str,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    shared: Arc<Shared>,
    stop: watch::Receiver<()>,
) -> Response<Body> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut r = response(StatusCode::SWITCHING_PROTOCOLS, empty());
    let upgrade = param("upgrade").unwrap_or_else(|| "websocket".to_string());
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&upgrade) {
        h.insert(http::header::UPGRADE, v);
    }
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    let accept = match param("accept").as_deref() {
        Some("good") => headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|k| derive_accept_key(k.as_bytes())),
        Some(v) => Some(v.to_string()),
        None => None,
    };
    if let Some(v) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let svc = service_fn(move |req| handle(req, shared.clone(), stop.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(upgraded, svc)
                .await;
        });
    }
    r
}

/// Accepts a WebSocket upgrade and echoes messages until the peer closes.
fn websocket(
    method: &Method,
    headers: &http::HeaderMap,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    stop: watch::Receiver<()>,
) -> Response<Body> {
    let wants_ws = headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        });
    let key = headers.get(http::header::SEC_WEBSOCKET_KEY);
    let (Some(on_upgrade), Some(key), true, true) =
        (on_upgrade, key, wants_ws, method == Method::GET)
    else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "Can \"Upgrade\" only to \"WebSocket\".",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(ws_echo(on_upgrade, stop));
    let mut r = response(StatusCode::SWITCHING_PROTOCOLS, empty());
    let h = r.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn ws_echo(on_upgrade: hyper::upgrade::OnUpgrade, mut stop: watch::Receiver<()>) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "standin: websocket upgrade failed");
            return;
        }
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    loop {
        let next = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let ok = match next {
            None | Some(Err(_)) => break,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => ws.send(m).await.is_ok(),
            // tungstenite queues the pong (or the close reply); flushing sends it.
            Some(Ok(Message::Ping(_) | Message::Close(_))) => ws.flush().await.is_ok(),
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => true,
        };
        if !ok {
            break;
        }
    }
}
