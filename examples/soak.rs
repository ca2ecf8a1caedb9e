//! The soak run of `bench/soak.sh`: a bounded mixed load against a running shim binary, with
//! its resident memory sampled as it goes. Not a benchmark: it checks that a long run has no
//! unexpected answer and flat memory.
//!
//! ```text
//! soak --shim PATH_TO_RELEASE_BINARY [--requests 1000000] [--clients 10000] [--workers 32]
//!      [--sample-secs 2]
//! ```
//!
//! It starts the stand-in Rocket.Chat in this process, writes a config and starts the shim
//! binary on loopback ports, then runs `--requests` operations from `--workers` concurrent
//! clients, each operation drawn from this mix:
//!
//! | class        | share | request                                                        | expected           |
//! |--------------|-------|----------------------------------------------------------------|--------------------|
//! | pass_info    | 40 %  | `GET /api/info`                                                | 200                |
//! | pass_bytes   |  5 %  | `GET /_standin/bytes/65536` (streamed)                         | 200, 65536 bytes   |
//! | pass_upload  |  5 %  | `POST /_standin/upload`, 16 KiB                                | 200, 16384 counted |
//! | hit          | 30 %  | the endpoint, one query, admin (cached)                        | 200                |
//! | miss         | 10 %  | the endpoint, a random offset, admin (a new cache key)         | 200                |
//! | flood        | ~10 % | the endpoint from one client address, far over `per_ip`        | 200 or 429         |
//! | websocket    | 0.1 % | open `/websocket`, 10 echoes, close                            | every echo back    |
//!
//! Hits and misses come from `--clients` client addresses (`X-Forwarded-For`, the peer
//! trusted; 10,000 by default), so they stay far below the per-IP budget; the flood comes from
//! one address and gets 429s.
//! Anything else (another status, a transport error, a wrong body) is an unexpected error.
//!
//! The resident set (`VmRSS` of the shim) is sampled every `--sample-secs`; the baseline is
//! the sample taken when 20 % of the operations are done (warm-up: cache, limiter keys and
//! pools filled). Exit status: 0 when there was no unexpected error, some 429s, tunnels back
//! to 0 and no upstream errors in `/metrics`, and no sample after warm-up above 120 % of the
//! baseline; 1 otherwise. Prints a summary table either way.
//!
//! Only loopback addresses are used.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rocketchat_standin::Standin;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    PassInfo,
    PassBytes,
    PassUpload,
    Hit,
    Miss,
    Flood,
    Websocket,
}

const CLASSES: [Class; 7] = [
    Class::PassInfo,
    Class::PassBytes,
    Class::PassUpload,
    Class::Hit,
    Class::Miss,
    Class::Flood,
    Class::Websocket,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::PassInfo => "pass_info",
            Class::PassBytes => "pass_bytes",
            Class::PassUpload => "pass_upload",
            Class::Hit => "hit",
            Class::Miss => "miss",
            Class::Flood => "flood",
            Class::Websocket => "websocket",
        }
    }

    /// Picks a class from a number in 0..1000.
    fn pick(n: u64) -> Class {
        match n {
            0 => Class::Websocket,
            1..=400 => Class::PassInfo,
            401..=450 => Class::PassBytes,
            451..=500 => Class::PassUpload,
            501..=800 => Class::Hit,
            801..=900 => Class::Miss,
            _ => Class::Flood,
        }
    }
}

/// Per-class tallies.
#[derive(Default)]
struct Tally {
    ok: u64,
    status_429: u64,
    unexpected: u64,
    latencies_us: Vec<u32>,
}

struct Shared {
    tallies: Mutex<Vec<Tally>>,
    done: AtomicU64,
}

struct Args {
    shim: PathBuf,
    only: Option<Class>,
    requests: u64,
    clients: u64,
    workers: usize,
    sample_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        shim: PathBuf::new(),
        only: None,
        requests: 1_000_000,
        clients: 10_000,
        workers: 32,
        sample_secs: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--shim" => args.shim = PathBuf::from(val()?),
            "--only" => {
                let name = val()?;
                args.only = Some(
                    CLASSES
                        .into_iter()
                        .find(|c| c.name() == name)
                        .ok_or(format!("no class {name}"))?,
                );
            }
            "--requests" => args.requests = val()?.parse().map_err(|e| format!("{e}"))?,
            "--workers" => args.workers = val()?.parse().map_err(|e| format!("{e}"))?,
            "--clients" => {
                args.clients = val()?
                    .parse::<u64>()
                    .map_err(|e| format!("{e}"))?
                    .clamp(1, 16_000_000)
            }
            "--sample-secs" => args.sample_secs = val()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.shim.as_os_str().is_empty() {
        return Err(
            "usage: soak --shim PATH [--requests N] [--clients N] [--workers N] [--sample-secs N]"
                .into(),
        );
    }
    Ok(args)
}

/// One sample: seconds since the start, operations done, the shim's RSS (KiB) and gauges
/// from its `/metrics` (cache entries, cache bytes, rate-limit keys, open connections).
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    done: u64,
    rss_kib: u64,
    cache_entries: f64,
    cache_bytes: f64,
    limiter_keys: f64,
    connections: f64,
}

/// The value of an unlabelled metric line.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn sample(pid: u32, admin: &str, started: Instant, done: u64) -> Option<Sample> {
    let rss_kib = rss_kib(pid)?;
    let metrics = match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Some(Sample {
        secs: started.elapsed().as_secs_f64(),
        done,
        rss_kib,
        cache_entries: gauge(&metrics, "rcshim_cache_entries"),
        cache_bytes: gauge(&metrics, "rcshim_cache_bytes"),
        limiter_keys: gauge(&metrics, "rcshim_ratelimit_keys"),
        connections: gauge(&metrics, "rcshim_open_connections"),
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts the shim binary; returns the child and its client and admin addresses.
fn start_shim(bin: &PathBuf, config: &PathBuf) -> Result<(Child, String, String), String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Keep reading (and dropping) the access log so the shim never blocks on its pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains("rocketchat-shim listening") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the shim printed no listening line".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
    let addr = v["addr"].as_str().ok_or("no addr")?.to_owned();
    let admin = v["admin"].as_str().unwrap_or_default().to_owned();
    Ok((child, addr, admin))
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

const ENDPOINT: &str = "/api/v1/im.messages.others";
const TOO_MANY: &str =
    r#"{"success":false,"error":"Error, too many requests. Please slow down. You must wait "#;

/// One operation; `Ok(true)` is an expected 429, `Ok(false)` another expected answer.
async fn operation(
    c: &reqwest::Client,
    base: &str,
    ws_base: &str,
    class: Class,
    clients: u64,
    rng: &mut u64,
) -> Result<bool, String> {
    let check = |r: &reqwest::Response, want: u16| {
        if r.status().as_u16() == want {
            Ok(())
        } else {
            Err(format!("status {}", r.status()))
        }
    };
    let client = xorshift(rng) % clients;
    let xff = format!(
        "10.{}.{}.{}",
        client / 62_500,
        client / 250 % 250,
        1 + client % 250
    );
    match class {
        Class::PassInfo => {
            let r = c
                .get(format!("{base}/api/info"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            check(&r, 200)?;
            let b = r.text().await.map_err(|e| e.to_string())?;
            if !b.contains("\"success\":true") {
                return Err(format!("body {b}"));
            }
        }
        Class::PassBytes => {
            let r = c
                .get(format!("{base}/_standin/bytes/65536"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            check(&r, 200)?;
            let b = r.bytes().await.map_err(|e| e.to_string())?;
            if b.len() != 65536 || b[65535] != (65535 % 251) as u8 {
                return Err(format!("{} bytes", b.len()));
            }
        }
        Class::PassUpload => {
            let r = c
                .post(format!("{base}/_standin/upload"))
                .body(vec![b'u'; 16384])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            check(&r, 200)?;
            let b = r.text().await.map_err(|e| e.to_string())?;
            if !b.contains("\"bytes\":16384") {
                return Err(format!("body {b}"));
            }
        }
        Class::Hit | Class::Miss => {
            // The caller's credential also goes upstream, whose own permission check must
            // pass too: both classes are the admin; a miss asks for a fresh offset.
            let query = if class == Class::Hit {
                "roomId=alice-idbob-id&count=20".to_string()
            } else {
                format!(
                    "roomId=alice-idbob-id&count=5&offset={}",
                    xorshift(rng) % 1_000_000
                )
            };
            let r = c
                .get(format!("{base}{ENDPOINT}?{query}"))
                .header("X-User-Id", "admin-id")
                .header("X-Auth-Token", "admin-token")
                .header("X-Forwarded-For", &xff)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            check(&r, 200)?;
            let b = r.text().await.map_err(|e| e.to_string())?;
            if !b.ends_with("\"success\":true}") {
                return Err(format!("body {b}"));
            }
        }
        Class::Flood => {
            let r = c
                .get(format!("{base}{ENDPOINT}?roomId=alice-idbob-id"))
                .header("X-User-Id", "admin-id")
                .header("X-Auth-Token", "admin-token")
                .header("X-Forwarded-For", "203.0.113.7")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let b = r.text().await.map_err(|e| e.to_string())?;
            return match status {
                200 if b.ends_with("\"success\":true}") => Ok(false),
                429 if b.starts_with(TOO_MANY) => Ok(true),
                s => Err(format!("status {s} body {b}")),
            };
        }
        Class::Websocket => {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/websocket"))
                .await
                .map_err(|e| e.to_string())?;
            for i in 0..10 {
                let msg = format!("soak {i} {}", xorshift(rng));
                ws.send(Message::Text(msg.clone().into()))
                    .await
                    .map_err(|e| e.to_string())?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == msg => {}
                    other => return Err(format!("echo {other:?}")),
                }
            }
            ws.close(None).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(false)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(run(args));
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(args: Args) -> bool {
    let standin = Standin::start().await.expect("stand-in");
    let dir = std::env::temp_dir().join(format!("rcshim-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.0/8"]
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "{}"
[policy]
dm_history_endpoint = "enabled"
roles = ["admin", "user"]
[cache]
enabled = {}
ttl = "5s"
max_bytes = "64MiB"
[rate_limit]
enabled = true
per_user = {{ requests = 1000000, per = "1s" }}
per_ip = {{ requests = 50, per = "1s" }}
"#,
            standin.url(),
            std::env::var("SOAK_CACHE")
                .map(|v| v != "off")
                .unwrap_or(true),
        ),
    )
    .expect("config");
    let (mut child, addr, admin) = match start_shim(&args.shim, &config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("soak: {e}");
            return false;
        }
    };
    let pid = child.id();
    let base = format!("http://{addr}");
    let ws_base = format!("ws://{addr}");
    println!(
        "soak: shim pid {pid} on {addr}, upstream {}, {} operations, {} workers, {} client addresses",
        standin.url(),
        args.requests,
        args.workers,
        args.clients
    );

    let shared = Arc::new(Shared {
        tallies: Mutex::new(CLASSES.iter().map(|_| Tally::default()).collect()),
        done: AtomicU64::new(0),
    });
    let errors_shown = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = args.requests;
    let clients = args.clients;
    let only = args.only;

    // Sampler: RSS and the shim's own gauges, every `--sample-secs`.
    let rss_samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (rss_samples, shared, admin) = (rss_samples.clone(), shared.clone(), admin.clone());
        let every = Duration::from_secs(args.sample_secs.max(1));
        tokio::spawn(async move {
            loop {
                let done = shared.done.load(Ordering::Relaxed).min(total);
                if let Some(s) = sample(pid, &admin, started, done).await {
                    rss_samples.lock().expect("samples").push(s);
                }
                if done >= total {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        })
    };

    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (shared, base, ws_base, errors_shown) = (
            shared.clone(),
            base.clone(),
            ws_base.clone(),
            errors_shown.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(4)
                .build()
                .expect("client");
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((w as u64 + 1) * 0x1234_5678_9ABC_DEF1);
            let mut local: Vec<Tally> = CLASSES.iter().map(|_| Tally::default()).collect();
            loop {
                let n = shared.done.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let class = only.unwrap_or_else(|| Class::pick(xorshift(&mut rng) % 1000));
                let t = Instant::now();
                let outcome = operation(&c, &base, &ws_base, class, clients, &mut rng).await;
                let i = CLASSES.iter().position(|c| *c == class).unwrap_or(0);
                let tally = &mut local[i];
                tally
                    .latencies_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match outcome {
                    Ok(true) => tally.status_429 += 1,
                    Ok(false) => tally.ok += 1,
                    Err(e) => {
                        tally.unexpected += 1;
                        if errors_shown.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!("unexpected ({}): {e}", class.name());
                        }
                    }
                }
            }
            let mut all = shared.tallies.lock().expect("tallies");
            for (a, l) in all.iter_mut().zip(local) {
                a.ok += l.ok;
                a.status_429 += l.status_429;
                a.unexpected += l.unexpected;
                a.latencies_us.extend(l.latencies_us);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let _ = sampler.await;
    if let Some(s) = sample(pid, &admin, started, total).await {
        rss_samples.lock().expect("samples").push(s);
    }

    // What the shim says about itself (the last tunnels may take a moment to close).
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if metrics.contains("\nrcshim_open_tunnels 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let upstream_errors = metric("rcshim_upstream_errors_total");
    let open_tunnels = metric("rcshim_open_tunnels");
    let cache_hits = metric("rcshim_cache_hits_total");
    let cache_misses = metric("rcshim_cache_misses_total");
    let rejected_ip = metric("rcshim_ratelimit_rejected_ip_total");

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    drop(standin);

    // ---- the summary ----
    let mut tallies = std::mem::take(&mut *shared.tallies.lock().expect("tallies"));
    let mut unexpected = 0;
    let mut sum = 0;
    let mut s429 = 0;
    println!();
    println!(
        "| class       | operations |    ok |   429 | unexpected | p50 ms | p99 ms | max ms |"
    );
    println!(
        "|-------------|-----------:|------:|------:|-----------:|-------:|-------:|-------:|"
    );
    for (class, t) in CLASSES.iter().zip(tallies.iter_mut()) {
        t.latencies_us.sort_unstable();
        let n = t.ok + t.status_429 + t.unexpected;
        sum += n;
        unexpected += t.unexpected;
        s429 += t.status_429;
        println!(
            "| {:<11} | {:>10} | {:>5} | {:>5} | {:>10} | {:>6.2} | {:>6.2} | {:>6.1} |",
            class.name(),
            n,
            t.ok,
            t.status_429,
            t.unexpected,
            percentile(&t.latencies_us, 0.5),
            percentile(&t.latencies_us, 0.99),
            percentile(&t.latencies_us, 1.0),
        );
    }
    println!(
        "| total       | {:>10} |       | {:>5} | {:>10} |        |        |        |",
        sum, s429, unexpected
    );
    println!();
    println!(
        "{} operations in {:.1} s ({:.0}/s); shim metrics: upstream errors {}, open tunnels {}, cache hits {}, misses {}, per-IP rejections {}",
        sum,
        elapsed.as_secs_f64(),
        sum as f64 / elapsed.as_secs_f64(),
        upstream_errors,
        open_tunnels,
        cache_hits,
        cache_misses,
        rejected_ip
    );

    let samples = rss_samples.lock().expect("samples").clone();
    let warm = total / 5;
    let baseline = samples
        .iter()
        .find(|s| s.done >= warm)
        .map(|s| s.rss_kib)
        .unwrap_or(0);
    let peak_after = samples
        .iter()
        .filter(|s| s.done >= warm)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let first = samples.first().map(|s| s.rss_kib).unwrap_or(0);
    let last = samples.last().map(|s| s.rss_kib).unwrap_or(0);
    println!();
    println!("| time s | operations | RSS MiB | cache entries | cache MiB | limiter keys | connections |");
    println!("|-------:|-----------:|--------:|--------------:|----------:|-------------:|------------:|");
    for s in &samples {
        println!(
            "| {:>6.0} | {:>10} | {:>7.1} | {:>13} | {:>9.1} | {:>12} | {:>11} |",
            s.secs,
            s.done,
            s.rss_kib as f64 / 1024.0,
            s.cache_entries,
            s.cache_bytes / 1048576.0,
            s.limiter_keys,
            s.connections
        );
    }
    let growth = if baseline > 0 {
        (peak_after as f64 / baseline as f64 - 1.0) * 100.0
    } else {
        f64::INFINITY
    };
    println!(
        "RSS: start {first} KiB, after warm-up (20 %) {baseline} KiB, peak after warm-up {peak_after} KiB ({growth:+.1} %), end {last} KiB"
    );

    let mut ok = true;
    let mut fail = |why: String| {
        println!("FAIL: {why}");
        ok = false;
    };
    if unexpected > 0 {
        fail(format!("{unexpected} unexpected answers"));
    }
    if sum != total {
        fail(format!("{sum} operations counted, {total} asked"));
    }
    if s429 == 0 && matches!(only, None | Some(Class::Flood)) {
        fail("no 429 at all: the flood was not limited".into());
    }
    if upstream_errors != 0.0 {
        fail(format!("{upstream_errors} upstream errors in /metrics"));
    }
    if open_tunnels != 0.0 {
        fail(format!("{open_tunnels} tunnels still open"));
    }
    if baseline == 0 || growth > 20.0 {
        fail(format!(
            "RSS grew {growth:+.1} % after warm-up (limit +20 %)"
        ));
    }
    if ok {
        println!("soak: ok");
    }
    ok
}
