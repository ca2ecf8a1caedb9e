//! Load-generation helpers for `bench/run.sh` (not a benchmark by itself: `cargo bench` runs it
//! with no subcommand and it exits at once). Built as a bench target so it shares the release
//! profile and the crate's dependencies; `bench/harness.py` finds the executable with
//! `cargo bench --no-run --message-format=json`.
//!
//! Subcommands (every result is one JSON line on stdout):
//!
//! * `upstream --listen ADDR [--delay-ms N]`: a tiny counting upstream for the coalescing
//!   scenario: `GET /api/v1/me` answers the admin identity, `GET /api/v1/im.messages.others`
//!   answers an empty page after `N` ms, `GET /_count` returns how many requests each path got.
//! * `burst --addr ADDR --target T --conns N [-H 'Name: value']...`: opens `N` connections,
//!   then sends one request on each at the same moment; counts the statuses.
//! * `xff-flood --addr ADDR --target T --keys N --conns C`: `N` requests over `C` keep-alive
//!   connections, request `i` carrying `X-Forwarded-For: 10.a.b.c` (a distinct address each).
//! * `ws-echo --url URL --conns C --secs S [--warmup-secs W] [--size B]`: echo round trips
//!   over `C` websockets, one message in flight on each; round trips/s and latency.
//! * `ws-idle --url URL --conns N [--parallel P]`: opens `N` websockets (each checked with one
//!   echo), prints a `ready` line and holds them until stdin is closed.
//! * `relay --listen ADDR --upstream ADDR`: the layer-4 floor of the pass-through scenario: each
//!   accepted connection gets its own upstream connection and bytes are copied both ways with
//!   no HTTP at all; prints a `listening` line and runs until killed.
//!
//! Only loopback addresses are accepted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench` (and maybe a filter): nothing to do then.
    let Some(cmd) = args
        .iter()
        .position(|a| !a.starts_with("--bench"))
        .map(|i| &args[i])
    else {
        return;
    };
    let rest: Vec<String> = args
        .iter()
        .skip_while(|a| *a != cmd)
        .skip(1)
        .cloned()
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(async {
        match cmd.as_str() {
            "upstream" => upstream(Opts::parse(&rest)?).await,
            "burst" => burst(Opts::parse(&rest)?).await,
            "xff-flood" => xff_flood(Opts::parse(&rest)?).await,
            "ws-echo" => ws_echo(Opts::parse(&rest)?).await,
            "ws-idle" => ws_idle(Opts::parse(&rest)?).await,
            "relay" => relay(Opts::parse(&rest)?).await,
            other => Err(format!(
                "loadgen: unknown subcommand {other:?} (upstream, burst, xff-flood, ws-echo, ws-idle, relay)"
            )),
        }
    });
    match out {
        Ok(line) => {
            println!("{line}");
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

/// `--name value` options (repeatable `-H`).
#[derive(Default)]
struct Opts {
    values: BTreeMap<String, String>,
    headers: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Res<Opts> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            if a == "-H" {
                o.headers.push(v.clone());
            } else if let Some(name) = a.strip_prefix("--") {
                o.values.insert(name.to_owned(), v.clone());
            } else {
                return Err(format!("unexpected argument {a:?}"));
            }
        }
        Ok(o)
    }

    fn str(&self, name: &str) -> Res<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num(&self, name: &str, default: Option<u64>) -> Res<u64> {
        match (self.values.get(name), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{name} is required")),
        }
    }

    fn addr(&self, name: &str) -> Res<SocketAddr> {
        let a: SocketAddr = self
            .str(name)?
            .parse()
            .map_err(|e| format!("--{name}: {e}"))?;
        if !a.ip().is_loopback() {
            return Err(format!("--{name}: only loopback addresses are allowed"));
        }
        Ok(a)
    }

    /// A `ws://127.0.0.1:PORT/path` URL and the address it names.
    fn ws_url(&self) -> Res<(String, SocketAddr)> {
        let url = self.str("url")?.to_owned();
        let rest = url
            .strip_prefix("ws://")
            .ok_or("--url must be ws://HOST:PORT/path")?;
        let authority = rest.split('/').next().unwrap_or("");
        let addr: SocketAddr = authority
            .parse()
            .map_err(|e| format!("--url: {authority}: {e}"))?;
        if !addr.ip().is_loopback() {
            return Err("--url: only loopback addresses are allowed".into());
        }
        Ok((url, addr))
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn status_json(counts: &BTreeMap<u16, u64>) -> String {
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
    format!("{{{}}}", parts.join(","))
}

// ---------------------------------------------------------------------------------------
// upstream

async fn upstream(o: Opts) -> Res<String> {
    let listen = o.addr("listen")?;
    let delay = Duration::from_millis(o.num("delay-ms", Some(1000))?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("loadgen upstream listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, counts.clone(), delay));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if path == "/_count" {
        let c = counts.lock().map(|c| c.clone()).unwrap_or_default();
        let parts: Vec<String> = c.iter().map(|(p, n)| format!("{p:?}:{n}")).collect();
        return Ok(json(StatusCode::OK, format!("{{{}}}", parts.join(","))));
    }
    if let Ok(mut c) = counts.lock() {
        *c.entry(path.clone()).or_insert(0) += 1;
    }
    let admin = req
        .headers()
        .get("x-user-id")
        .is_some_and(|v| v == "admin-id")
        && req
            .headers()
            .get("x-auth-token")
            .is_some_and(|v| v == "admin-token");
    Ok(match path.as_str() {
        "/api/v1/me" if admin => json(
            StatusCode::OK,
            r#"{"_id":"admin-id","username":"admin","roles":["user","admin"],"success":true}"#
                .into(),
        ),
        "/api/v1/im.messages.others" if admin => {
            tokio::time::sleep(delay).await;
            json(
                StatusCode::OK,
                r#"{"messages":[],"offset":0,"count":50,"total":0,"success":true}"#.into(),
            )
        }
        _ if path.starts_with("/api/") => json(
            StatusCode::UNAUTHORIZED,
            r#"{"status":"error","message":"You must be logged in to do this."}"#.into(),
        ),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    })
}

// ---------------------------------------------------------------------------------------
// raw HTTP/1.1

/// Reads one response (head + Content-Length body) from `s`, keeping extra bytes in `buf`.
/// Returns the status and whether the server will close the connection.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Res<(u16, bool)> {
    let head_end = loop {
        if let Some(p) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 head")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    let mut len: Option<usize> = None;
    let mut close = false;
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            let n = n.trim();
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            } else if n.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            } else if n.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported by this client".into());
            }
        }
    }
    let len = len.unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Ok((status, close))
}

fn request_bytes(target: &str, host: &SocketAddr, headers: &[String], extra: &str) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(extra);
    r.push_str("\r\n");
    r.into_bytes()
}

// ---------------------------------------------------------------------------------------
// burst

async fn burst(o: Opts) -> Res<String> {
    let addr = o.addr("addr")?;
    let target = o.str("target")?.to_owned();
    let n = o.num("conns", None)? as usize;
    let req = Arc::new(request_bytes(
        &target,
        &addr,
        &o.headers,
        "Connection: close\r\n",
    ));
    // Connect everything first (bounded, so no SYN queue overflows), then fire together.
    let mut streams = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let conns = futures_util::future::join_all(batch.iter().map(|_| TcpStream::connect(addr)));
        for c in conns.await {
            let s = c.map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            streams.push(s);
        }
    }
    let start = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let req = req.clone();
            tokio::spawn(async move {
                s.write_all(&req).await.map_err(|e| e.to_string())?;
                let mut buf = Vec::new();
                let (status, _) = read_response(&mut s, &mut buf).await?;
                Ok::<_, String>((status, start.elapsed()))
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    let mut errors = 0u64;
    let mut lat = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok((status, d))) => {
                *counts.entry(status).or_insert(0u64) += 1;
                lat.push(d.as_micros() as u64);
            }
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    Ok(format!(
        "{{\"conns\":{n},\"status\":{},\"errors\":{errors},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        status_json(&counts),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    ))
}

// ---------------------------------------------------------------------------------------
// xff-flood

async fn xff_flood(o: Opts) -> Res<String> {
    let addr = o.addr("addr")?;
    let target = o.str("target")?.to_owned();
    let keys = o.num("keys", None)?;
    if keys > (1 << 24) {
        return Err("--keys: at most 16777216 (10.0.0.0/8)".into());
    }
    let conns = o.num("conns", Some(32))?.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let next = next.clone();
        let target = target.clone();
        let headers = o.headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let xff = format!(
                    "X-Forwarded-For: 10.{}.{}.{}\r\n",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                );
                let req = request_bytes(&target, &addr, &headers, &xff);
                let s = match conn.as_mut() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            buf.clear();
                            conn.insert(s)
                        }
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    },
                };
                let r = match s.write_all(&req).await {
                    Ok(()) => read_response(s, &mut buf).await,
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok((status, close)) => {
                        *counts.entry(status).or_insert(0) += 1;
                        if close {
                            conn = None;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (counts, errors)
        }));
    }
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (c, e) = t.await.map_err(|e| e.to_string())?;
        for (s, n) in c {
            *counts.entry(s).or_insert(0) += n;
        }
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"requests\":{keys},\"secs\":{secs:.3},\"per_s\":{:.1},\"status\":{},\"errors\":{errors}}}",
        keys as f64 / secs,
        status_json(&counts)
    ))
}

// ---------------------------------------------------------------------------------------
// websockets

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(url: &str, addr: SocketAddr) -> Res<Ws> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Sends `payload` and waits for the same bytes back.
async fn ws_round_trip(ws: &mut Ws, payload: &Bytes) -> Res<()> {
    ws.send(Message::Binary(payload.clone()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b == *payload => return Ok(()),
            Some(Ok(Message::Binary(_))) => return Err("echo differs".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Err(format!("unexpected message {m:?}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

async fn ws_echo(o: Opts) -> Res<String> {
    let (url, addr) = o.ws_url()?;
    let conns = o.num("conns", Some(32))?.max(1);
    let secs = o.num("secs", Some(10))?;
    let warmup = o.num("warmup-secs", Some(1))?;
    let size = o.num("size", Some(64))? as usize;
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut sockets = Vec::new();
    for _ in 0..conns {
        sockets.push(ws_connect(&url, addr).await?);
    }
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs(warmup);
    let until = measure_from + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let s = Instant::now();
                if s >= until {
                    break;
                }
                match ws_round_trip(&mut ws, &payload).await {
                    Ok(()) => {
                        if s >= measure_from {
                            lat.push(s.elapsed().as_micros() as u64);
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    Ok(format!(
        "{{\"round_trips\":{},\"per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        lat.len(),
        lat.len() as f64 / secs as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    ))
}

async fn ws_idle(o: Opts) -> Res<String> {
    let (url, addr) = o.ws_url()?;
    let n = o.num("conns", None)? as usize;
    let parallel = o.num("parallel", Some(100))?.max(1) as usize;
    let payload = Bytes::from_static(b"idle-tunnel-check");
    let mut held = Vec::with_capacity(n);
    let mut errors = 0u64;
    let mut first_error = String::new();
    let start = Instant::now();
    let mut remaining = n;
    while remaining > 0 {
        let k = remaining.min(parallel);
        remaining -= k;
        let batch = (0..k).map(|_| {
            let (url, payload) = (url.clone(), payload.clone());
            async move {
                let mut ws = ws_connect(&url, addr).await?;
                ws_round_trip(&mut ws, &payload).await?;
                Ok::<_, String>(ws)
            }
        });
        for r in futures_util::future::join_all(batch).await {
            match r {
                Ok(ws) => held.push(ws),
                Err(e) => {
                    if errors == 0 {
                        first_error = e;
                    }
                    errors += 1;
                }
            }
        }
    }
    println!(
        "{{\"ready\":{},\"errors\":{errors},\"first_error\":{:?},\"open_secs\":{:.2}}}",
        held.len(),
        first_error,
        start.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    // Hold until the harness closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while let Ok(k) = stdin.read(&mut sink).await {
        if k == 0 {
            break;
        }
    }
    let held_n = held.len();
    drop(held);
    Ok(format!("{{\"released\":{held_n}}}"))
}

// ---------------------------------------------------------------------------------------
// relay

/// The layer-4 floor: what a proxy costs per request when it does no HTTP at all. It makes the
/// syscalls a pass-through proxy cannot avoid (read the request, write it upstream, read the
/// answer, write it back, on epoll) and nothing else, so the shim's CPU per request over this
/// one's is what HTTP handling costs. One upstream connection per client connection, as a
/// proxy that pairs them (and like nginx `stream`, which has no pool); `TCP_NODELAY` on both
/// sides, as the shim and nginx set it. The runtime is `main`'s current-thread one: one core,
/// no work stealing, like the proxies under test.
async fn relay(o: Opts) -> Res<String> {
    let listen = o.addr("listen")?;
    let upstream = o.addr("upstream")?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("loadgen relay listening on {addr}");
    let _ = std::io::stdout().flush();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors or a connection reset before it was accepted: the relay keeps
            // serving the connections it has rather than exiting mid-run.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut client = client;
            let _ = client.set_nodelay(true);
            // No upstream: dropping the client closes it, which the load generator counts.
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}
