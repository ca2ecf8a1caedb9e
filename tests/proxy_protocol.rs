//! The PROXY protocol on the client listener (`server.proxy_protocol`, spec section 10): v1
//! and v2 headers from `trusted_proxies` make their source the client address (forwarding
//! headers, per-IP budget, access log), LOCAL keeps the peer, missing / malformed / late /
//! untrusted headers close the connection without an answer and are counted, the header comes
//! before the TLS handshake, and a real HAProxy (`send-proxy-v2`) works as the sender.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rocketchat_shim::config::{Budget, Config};
use tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const ECHO: &str = "GET /_standin/echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";

const PLAIN: &str = "GET /_standin/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn behind_proxy(c: &mut Config) {
    c.server.proxy_protocol = true;
    c.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
}

/// A v2 PROXY header (command PROXY over TCP) for `src` -> `dst`, built by hand, with `tlv`
/// appended.
fn v2(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut addr = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addr.extend_from_slice(&s.ip().octets());
            addr.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            addr.extend_from_slice(&s.ip().octets());
            addr.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    addr.extend_from_slice(&src.port().to_be_bytes());
    addr.extend_from_slice(&dst.port().to_be_bytes());
    addr.extend_from_slice(tlv);
    let mut h = V2_SIG.to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(fam);
    h.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    h.extend_from_slice(&addr);
    h
}

/// A v2 LOCAL header (a balancer's own health check).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

fn cat(a: &[u8], b: &str) -> Vec<u8> {
    let mut v = a.to_vec();
    v.extend_from_slice(b.as_bytes());
    v
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

fn refused(p: &Pair) -> u64 {
    p.shim
        .app
        .metrics
        .front_door()
        .proxy_refused
        .load(Ordering::Relaxed)
}

fn accepted(p: &Pair) -> u64 {
    p.shim
        .app
        .metrics
        .front_door()
        .proxy_accepted
        .load(Ordering::Relaxed)
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_v1_source_is_the_client_address() {
    let p = start(behind_proxy).await;
    let answer = raw(
        p.shim.addr,
        &cat(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n", ECHO),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    // The client's own forwarding headers are not believed: 203.0.113.7 is not trusted.
    assert_eq!(rec.header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(rec.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    // TCP6 and UNKNOWN (which keeps the peer).
    let answer = raw(
        p.shim.addr,
        &cat(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n", ECHO),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("2001:db8::7"));
    let answer = raw(p.shim.addr, &cat(b"PROXY UNKNOWN\r\n", PLAIN), WAIT).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!((accepted(&p), refused(&p)), (3, 0));
}

/// A final review: a PROXY source that is itself inside `trusted_proxies` (clients on the same
/// internal network as the balancer) must not make the client's own `X-Forwarded-For` believed:
/// the header's source is the client address for everything (spec/shim.md §10).
#[tokio::test]
async fn a_proxy_source_inside_trusted_proxies_does_not_unlock_forwarded_for() {
    let p = start(|c| {
        c.server.proxy_protocol = true;
        c.server.trusted_proxies = vec![
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
    })
    .await;
    let answer = raw(
        p.shim.addr,
        &cat(b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 443\r\n", ECHO),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-forwarded-for"), Some("10.1.2.3"));
    assert_eq!(rec.header("x-real-ip"), Some("10.1.2.3"));
}

#[tokio::test]
async fn a_v2_source_is_the_client_address_and_local_keeps_the_peer() {
    let p = start(behind_proxy).await;
    let src: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
    let dst: SocketAddr = "10.0.0.1:443".parse().expect("addr");
    let answer = raw(p.shim.addr, &cat(&v2(src, dst, &[]), ECHO), WAIT).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-forwarded-for"), Some("198.51.100.9"));
    assert_eq!(rec.header("x-real-ip"), Some("198.51.100.9"));
    // IPv6 with a TLV (a NOOP, type 0x04) after the addresses.
    let src6: SocketAddr = "[2001:db8::42]:40000".parse().expect("addr");
    let dst6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
    let answer = raw(
        p.shim.addr,
        &cat(&v2(src6, dst6, &[0x04, 0x00, 0x02, 0xAA, 0xBB]), ECHO),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("2001:db8::42"));
    // LOCAL: the balancer's own connection, the peer address stays (and, the peer being a
    // trusted proxy, its own forwarding headers would be believed: this one sends none).
    let answer = raw(p.shim.addr, &cat(&v2_local(), PLAIN), WAIT).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("127.0.0.1"));
    // The header split over several writes is read to its end, no byte of the request lost.
    let whole = cat(&v2(src, dst, &[]), ECHO);
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    for part in whole.chunks(7) {
        s.write_all(part).await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("answer")
        .expect("read");
    assert_eq!(status(&out), "200", "{out}");
    assert_eq!((accepted(&p), refused(&p)), (4, 0));
}

#[tokio::test]
async fn missing_malformed_or_late_headers_are_closed_without_an_answer() {
    let p = start(|c| {
        behind_proxy(c);
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Missing: a trusted peer that starts with a request.
    assert_eq!(raw(p.shim.addr, ECHO.as_bytes(), WAIT).await, "");
    // Malformed v1: a bad address; a line without its protocol.
    let bad_v1 = cat(b"PROXY TCP4 999.0.0.1 10.0.0.1 5555 443\r\n", ECHO);
    assert_eq!(raw(p.shim.addr, &bad_v1, WAIT).await, "");
    assert_eq!(raw(p.shim.addr, &cat(b"PROXY \r\n", ECHO), WAIT).await, "");
    // Malformed v2: version 1 in the version nibble.
    let mut bad_v2 = v2(
        "198.51.100.9:1".parse().expect("addr"),
        "10.0.0.1:443".parse().expect("addr"),
        &[],
    );
    bad_v2[12] = 0x11;
    assert_eq!(raw(p.shim.addr, &cat(&bad_v2, ECHO), WAIT).await, "");
    // A v1 line that never ends within 107 bytes.
    let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    assert_eq!(
        raw(p.shim.addr, &cat(long.as_bytes(), ECHO), WAIT).await,
        ""
    );
    assert_eq!(p.standin.count_path("/_standin/echo"), 0);
    assert_eq!((accepted(&p), refused(&p)), (0, 5));
    // Late: half a header, then nothing; cut by header_read_timeout from the accept.
    let started = Instant::now();
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    s.write_all(b"PROXY TCP4 203.0").await.expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("cut")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(refused(&p), 6);
    let m = p.shim.app.metrics.render();
    assert!(
        m.contains("rcshim_proxy_protocol_headers_total{outcome=\"refused\"} 6"),
        "{m}"
    );
    assert!(m.contains("rcshim_proxy_protocol_headers_total{outcome=\"accepted\"} 0"));
}

#[tokio::test]
async fn untrusted_peers_are_served_plain_and_closed_when_they_send_a_header() {
    let p = start(|c| {
        c.server.proxy_protocol = true;
        c.server.trusted_proxies = vec!["10.0.0.0/8".parse().expect("net")];
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let answer = raw(p.shim.addr, ECHO.as_bytes(), WAIT).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("127.0.0.1"));
    // A forged header from a peer outside trusted_proxies: closed, never believed.
    let forged = cat(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n", ECHO);
    assert_eq!(raw(p.shim.addr, &forged, WAIT).await, "");
    let forged2 = v2(
        "203.0.113.7:5555".parse().expect("addr"),
        "10.0.0.1:443".parse().expect("addr"),
        &[],
    );
    assert_eq!(raw(p.shim.addr, &cat(&forged2, ECHO), WAIT).await, "");
    assert_eq!(p.standin.count_path("/_standin/echo"), 1);
    assert_eq!((accepted(&p), refused(&p)), (0, 2));
    // Requests starting with P (POST, PUT, PATCH, the HTTP/2 preface) are no header.
    let post =
        "POST /_standin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = raw(p.shim.addr, post.as_bytes(), WAIT).await;
    assert_eq!(status(&answer), "200", "{answer}");
    // A silent untrusted peer owed no header: closed by the head bound, not counted.
    let mut s = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("cut")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!((accepted(&p), refused(&p)), (0, 2));
}

#[tokio::test]
async fn the_per_ip_budget_is_keyed_by_the_proxy_source() {
    const Q: &str = "/api/v1/im.messages.others?roomId=alice-idbob-id&count=5";
    let p = start(|c| {
        behind_proxy(c);
        c.rate_limit.enabled = true;
        c.rate_limit.per_ip = Budget {
            requests: 2,
            per: Duration::from_secs(60),
        };
        c.rate_limit.per_user = Budget {
            requests: 100,
            per: Duration::from_secs(60),
        };
        c.cache.enabled = false;
    })
    .await;
    let req = format!(
        "GET {Q} HTTP/1.1\r\nHost: x\r\nX-User-Id: admin-id\r\nX-Auth-Token: admin-token\r\nConnection: close\r\n\r\n"
    );
    let from = |ip: &str| {
        cat(
            format!("PROXY TCP4 {ip} 10.0.0.1 5555 443\r\n").as_bytes(),
            &req,
        )
    };
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(status(&raw(p.shim.addr, &from("203.0.113.7"), WAIT).await).to_owned());
    }
    assert_eq!(a, ["200", "200", "429"]);
    // Another source behind the same balancer has its own budget.
    let b = raw(p.shim.addr, &from("203.0.113.8"), WAIT).await;
    assert_eq!(status(&b), "200", "{b}");
    assert_eq!(
        p.shim
            .app
            .metrics
            .counters()
            .ratelimit_rejected_ip
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn the_header_comes_first_then_the_tls_handshake() {
    let dir = proc::tempdir("pp-tls");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let tls_cfg = leaf.config();
    let p = start(move |c| {
        behind_proxy(c);
        c.server.tls = Some(tls_cfg);
    })
    .await;
    let mut tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let src: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
    tcp.write_all(&v2(src, "10.0.0.1:443".parse().expect("addr"), &[]))
        .await
        .expect("write");
    let mut s = handshake(
        tcp,
        client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .expect("handshake");
    let (head, _) = http11(&mut s, "/_standin/echo").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-real-ip"), Some("198.51.100.9"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
    // A TLS ClientHello where the header should be: closed, counted as a PROXY refusal.
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    assert!(
        handshake(tcp, client_config(&ca, &[], &[&rustls::version::TLS13]))
            .await
            .is_err()
    );
    for _ in 0..500 {
        if refused(&p) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((accepted(&p), refused(&p)), (1, 1));
}

/// Kills the HAProxy the test started when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy from Debian's packages in TCP mode with `send-proxy-v2`, in front of the shim
/// binary terminating TLS: the client connects from 127.0.0.2, HAProxy from 127.0.0.1 (the
/// only trusted proxy); the stand-in and the access log see 127.0.0.2.
#[tokio::test]
async fn haproxy_send_proxy_v2_is_a_real_sender() {
    let haproxy = std::process::Command::new("haproxy").arg("-v").output();
    assert!(
        haproxy.map(|o| o.status.success()).unwrap_or(false),
        "this test needs HAProxy: apt-get install -y haproxy (scripts/test.sh installs it)"
    );
    let dir = proc::tempdir("haproxy");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let standin = rocketchat_standin::Standin::start().await.expect("standin");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
            leaf.cert_file.display(),
            leaf.key_file.display(),
            standin.url()
        ),
    )
    .expect("write");
    let mut shim = proc::spawn_proc(&config);
    // Stops the shim if an assertion below fails before its own SIGTERM.
    let mut shim_guard = Disarm(Some(shim.child.id()));
    let front = dead_port();
    let hcfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{front}\n  default_backend shim\nbackend shim\n  server shim {} send-proxy-v2 source 127.0.0.1\n",
            shim.addr
        ),
    )
    .expect("write");
    let hp = Child(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&hcfg)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().expect("addr");
    let mut up = false;
    for _ in 0..200 {
        if TcpStream::connect(front).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "HAProxy did not start listening on {front}");
    for i in 0..3 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let tcp = sock.connect(front).await.expect("connect");
        let mut s = handshake(
            tcp,
            client_config(&ca, &[b"http/1.1"], &[&rustls::version::TLS13]),
        )
        .await
        .expect("handshake through HAProxy");
        let (head, _) = http11(&mut s, &format!("/_standin/echo?n={i}")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let recs: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.path == "/_standin/echo")
        .collect();
    assert_eq!(recs.len(), 3);
    for r in &recs {
        assert_eq!(r.header("x-real-ip"), Some("127.0.0.2"));
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.2"));
        assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    }
    let line = shim
        .wait_line("/_standin/echo", Duration::from_secs(10))
        .expect("access log line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["client"], "127.0.0.2", "{line}");
    // The shim's counters, as scraped.
    let m = client()
        .get(format!("http://{}/metrics", shim.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert_eq!(value("rcshim_tls_handshakes_total{outcome=\"ok\"} "), 3);
    // The readiness probe above went through HAProxy too and closed at once: no failed
    // handshake; its header counts as accepted when HAProxy had reached the shim already.
    assert_eq!(value("rcshim_tls_handshakes_total{outcome=\"failed\"} "), 0);
    let accepted = value("rcshim_proxy_protocol_headers_total{outcome=\"accepted\"} ");
    assert!((3..=4).contains(&accepted), "{accepted} headers accepted");
    assert_eq!(
        value("rcshim_proxy_protocol_headers_total{outcome=\"refused\"} "),
        0
    );
    drop(hp);
    proc::signal(&shim.child, "TERM");
    assert_eq!(proc::wait_exit(&mut shim.child, Duration::from_secs(20)), 0);
    shim_guard.0 = None;
}

/// Sends SIGKILL to the process when dropped, unless disarmed (`.0 = None`) after it was
/// waited for.
struct Disarm(Option<u32>);

impl Drop for Disarm {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}
