//! TLS on the client listener (`[server.tls]`, spec section 10): HTTPS with a private CA over
//! TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2 chosen by ALPN, `wss://` through the shim, the three
//! PEM key encodings, reloads that give new connections the new pair while open ones keep
//! theirs, bad pairs refused (reload, start, `check`), and handshakes bounded by
//! `header_read_timeout` and counted.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rocketchat_shim::config::Config;
use tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const H11: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";
const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn start_tls(leaf: &Leaf, tweak: impl FnOnce(&mut Config)) -> Pair {
    let tls = leaf.config();
    start(move |c| {
        c.server.tls = Some(tls);
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn https_over_tls12_and_tls13_with_http11_by_alpn() {
    let dir = proc::tempdir("tls-h11");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let p = start_tls(&leaf, |_| {}).await;
    for (version, name) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
        let mut s = handshake(tcp, client_config(&ca, &[H2, H11], &[version]))
            .await
            .expect("handshake");
        // The client prefers h2 but this one offers http/1.1 only below.
        assert_eq!(s.get_ref().1.protocol_version(), Some(name));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(H2));
        drop(s);
        let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
        s = handshake(tcp, client_config(&ca, &[H11], &[version]))
            .await
            .expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(H11));
        assert_eq!(served_leaf(&s), leaf.der);
        let (head, body) = http11(&mut s, "/api/info").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("\"success\":true"), "{body}");
        // Keep-alive on the same TLS connection.
        let (head, _) = http11(&mut s, "/_standin/echo").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let rec = p.standin.requests().into_iter().last().expect("recorded");
        assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
        assert_eq!(rec.header("x-real-ip"), Some("127.0.0.1"));
    }
    // No ALPN at all: HTTP/1.1.
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut s = handshake(tcp, client_config(&ca, &[], BOTH))
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let (head, _) = http11(&mut s, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let fd = p.shim.app.metrics.front_door();
    assert_eq!(fd.tls_handshakes_ok.load(Ordering::Relaxed), 5);
    assert_eq!(fd.tls_handshakes_failed.load(Ordering::Relaxed), 0);
    // A plain-text request on the TLS port is no handshake: closed, counted as failed.
    let answer = raw(
        p.shim.addr,
        b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(fd.tls_handshakes_failed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn h2_by_alpn_serves_http2() {
    let dir = proc::tempdir("tls-h2");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let p = start_tls(&leaf, |_| {}).await;
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let s = handshake(tcp, client_config(&ca, &[H2, H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(H2));
    let (mut h2, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(conn);
    for path in ["/api/info", "/_standin/echo"] {
        let req = http::Request::get(format!("https://127.0.0.1{path}"))
            .body(())
            .expect("request");
        let (resp, _) = h2.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        assert!(!bytes.is_empty());
    }
    let rec = p.standin.requests().into_iter().last().expect("recorded");
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_all_serve() {
    let dir = proc::tempdir("tls-keys");
    let ca = Ca::new("test CA");
    // PKCS#8 ECDSA P-256 (rcgen's own) and the same kind of key as SEC1 "EC PRIVATE KEY".
    let pkcs8 = ca.leaf_files(&dir, "pkcs8", 2030);
    let ec_key = rcgen::KeyPair::generate().expect("key");
    let ec_cert = ca.leaf_with(&ec_key, "sec1", 2030);
    let sec1_pem = sec1_pem_from_pkcs8(&ec_key.serialize_der());
    assert!(sec1_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let sec1 = Leaf::write(&dir, "sec1", &ec_cert, &sec1_pem);
    // PKCS#1 "RSA PRIVATE KEY": ring cannot generate RSA keys, so openssl makes one.
    let rsa8 = dir.join("rsa8.pem");
    let rsa1 = dir.join("rsa1.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa8)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && std::process::Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(&rsa8)
            .arg("-out")
            .arg(&rsa1)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(
        ok,
        "the PKCS#1 case needs the openssl command (Debian: apt-get install openssl)"
    );
    let rsa_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(&rsa8).expect("read")).expect("rsa key");
    let rsa_cert = ca.leaf_with(&rsa_key, "pkcs1", 2030);
    let pkcs1_pem = std::fs::read_to_string(&rsa1).expect("read");
    assert!(pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let pkcs1 = Leaf::write(&dir, "pkcs1", &rsa_cert, &pkcs1_pem);
    for leaf in [&pkcs8, &sec1, &pkcs1] {
        let p = start_tls(leaf, |_| {}).await;
        let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
        let mut s = handshake(tcp, client_config(&ca, &[H11], BOTH))
            .await
            .expect("handshake");
        assert_eq!(served_leaf(&s), leaf.der);
        let (head, _) = http11(&mut s, "/api/info").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}

#[tokio::test]
async fn wss_echo_through_the_shim() {
    let dir = proc::tempdir("tls-wss");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let p = start_tls(&leaf, |_| {}).await;
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let s = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://127.0.0.1/websocket", s)
        .await
        .expect("websocket over TLS");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        let text = format!("over the shim's TLS {i}");
        ws.send(Message::Text(text.clone().into()))
            .await
            .expect("send");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::Text(text.into())
        );
    }
    let rec = p
        .standin
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/websocket")
        .expect("recorded");
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let dir = proc::tempdir("tls-reload");
    let ca = Ca::new("test CA");
    let one = ca.leaf_files(&dir, "one", 2030);
    let p = start_tls(&one, |_| {}).await;
    let expiry = |p: &Pair| {
        p.shim
            .app
            .metrics
            .front_door()
            .cert_not_after
            .load(Ordering::Relaxed)
    };
    assert_eq!(expiry(&p), 1_893_456_000); // 2030-01-01
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut old = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&old), one.der);
    let (head, _) = http11(&mut old, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A renewal rewrites the same two files; the config is unchanged.
    let two = ca.leaf_files(&dir, "two", 2031);
    std::fs::copy(&two.cert_file, &one.cert_file).expect("copy");
    std::fs::copy(&two.key_file, &one.key_file).expect("copy");
    let config = (*p.shim.app.generation().config).clone();
    p.shim.reload(config).expect("reload");
    assert_eq!(expiry(&p), 1_924_992_000); // 2031-01-01

    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut new = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&new), two.der);
    let (head, _) = http11(&mut new, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The old connection keeps its session and goes on working.
    let (head, _) = http11(&mut old, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(served_leaf(&old), one.der);
    let metrics = p.shim.app.metrics.render();
    assert!(
        metrics.contains("\nrcshim_tls_certificate_expiry_seconds "),
        "{metrics}"
    );
    assert!(metrics.contains("rcshim_tls_handshakes_total{outcome=\"ok\"} 2"));
}

#[tokio::test]
async fn a_mismatched_or_missing_pair_is_refused_on_reload_and_the_old_one_stays() {
    let dir = proc::tempdir("tls-bad-reload");
    let ca = Ca::new("test CA");
    let one = ca.leaf_files(&dir, "one", 2030);
    let other = ca.leaf_files(&dir, "other", 2031);
    let p = start_tls(&one, |_| {}).await;
    let good = (*p.shim.app.generation().config).clone();

    // The certificate of one, the key of another.
    let mut mismatched = good.clone();
    mismatched.server.tls = Some(rocketchat_shim::config::TlsConfig {
        cert_file: one.cert_file.clone(),
        key_file: other.key_file.clone(),
    });
    let e = p.shim.reload(mismatched).expect_err("refused");
    assert_eq!(
        e,
        format!(
            "server.tls: the key in {} does not match the certificate in {}",
            other.key_file.display(),
            one.cert_file.display()
        )
    );
    let mut missing = good.clone();
    missing.server.tls = Some(rocketchat_shim::config::TlsConfig {
        cert_file: dir.join("nonexistent.crt"),
        key_file: one.key_file.clone(),
    });
    let e = p.shim.reload(missing).expect_err("refused");
    assert!(
        e.starts_with("server.tls.cert_file ") && e.contains("No such file"),
        "{e}"
    );
    // Garbage in the key file.
    std::fs::write(dir.join("junk.key"), "not a key\n").expect("write");
    let mut junk = good.clone();
    junk.server.tls = Some(rocketchat_shim::config::TlsConfig {
        cert_file: one.cert_file.clone(),
        key_file: dir.join("junk.key"),
    });
    let e = p.shim.reload(junk).expect_err("refused");
    assert!(e.contains("no PEM private key"), "{e}");

    // The old pair is still served, to new connections too.
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut s = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&s), one.der);
    let (head, _) = http11(&mut s, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        p.shim
            .app
            .metrics
            .front_door()
            .cert_not_after
            .load(Ordering::Relaxed),
        1_893_456_000
    );
}

/// The binary: a bad pair at start is exit 2 and `check` says why; a good one starts, and a
/// real SIGHUP after the files were rewritten serves the new certificate to new connections
/// while the old connection keeps working; a SIGHUP with a broken pair is logged and the
/// running pair stays.
#[tokio::test]
async fn the_binary_exits_2_on_a_bad_pair_and_reloads_on_sighup() {
    let dir = proc::tempdir("tls-bin");
    let ca = Ca::new("test CA");
    let one = ca.leaf_files(&dir, "one", 2030);
    let other = ca.leaf_files(&dir, "other", 2031);
    let standin = rocketchat_standin::Standin::start().await.expect("standin");
    let tls_section = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    // The [server.tls] table must follow [server] in the file: write it by hand.
    let write = |extra: &str| {
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n{extra}[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
                standin.url()
            ),
        )
        .expect("write");
        path
    };
    let bad = write(&tls_section(&one.cert_file, &other.key_file));
    let want = format!(
        "server.tls: the key in {} does not match the certificate in {}",
        other.key_file.display(),
        one.cert_file.display()
    );
    let out = std::process::Command::new(proc::BIN)
        .arg("--config")
        .arg(&bad)
        .arg("check")
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), want);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let out = std::process::Command::new(proc::BIN)
        .arg("--config")
        .arg(&bad)
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), want);

    let good = write(&tls_section(&one.cert_file, &one.key_file));
    let out = std::process::Command::new(proc::BIN)
        .arg("--config")
        .arg(&good)
        .arg("check")
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    let mut shim = proc::spawn_proc(&good);
    let addr: std::net::SocketAddr = shim.addr.parse().expect("addr");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut old = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&old), one.der);
    let (head, _) = http11(&mut old, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A broken pair on SIGHUP: logged with the reason, the running pair stays.
    std::fs::write(&one.key_file, std::fs::read(&other.key_file).expect("read")).expect("write");
    proc::signal(&shim.child, "HUP");
    let line = shim
        .wait_line("configuration reload refused", Duration::from_secs(10))
        .expect("refusal logged");
    assert!(line.contains("does not match the certificate"), "{line}");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let s = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&s), one.der);

    // The renewal: both files rewritten, then SIGHUP.
    let two = ca.leaf_files(&dir, "two", 2031);
    std::fs::copy(&two.cert_file, &one.cert_file).expect("copy");
    std::fs::copy(&two.key_file, &one.key_file).expect("copy");
    proc::signal(&shim.child, "HUP");
    shim.wait_line("configuration reloaded", Duration::from_secs(10))
        .expect("reloaded");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut new = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    assert_eq!(served_leaf(&new), two.der);
    let (head, _) = http11(&mut new, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = http11(&mut old, "/api/info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop((old, new, s));
    proc::signal(&shim.child, "TERM");
    assert_eq!(proc::wait_exit(&mut shim.child, Duration::from_secs(20)), 0);
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_within_header_read_timeout_and_frees_its_slot() {
    let dir = proc::tempdir("tls-stall");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let head_timeout = Duration::from_secs(1);
    let p = start_tls(&leaf, |c| {
        c.server.header_read_timeout = head_timeout;
        c.server.max_connections = 1;
    })
    .await;
    // A connection closed before its first byte (a TCP health check) is no failed handshake;
    // with one slot, it is over before the next connection is accepted.
    drop(TcpStream::connect(p.shim.addr).await.expect("connect"));
    // The first bytes of a ClientHello record, then nothing.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(p.shim.addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    // The only slot is taken: a second client waits in the backlog until the stall is cut.
    let waiting = tokio::spawn({
        let addr = p.shim.addr;
        let cfg = client_config(&ca, &[H11], BOTH);
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut s = handshake(tcp, cfg).await.expect("handshake");
            http11(&mut s, "/api/info").await
        }
    });
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake is cut")
        .unwrap_or(0);
    let cut_after = started.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(cut_after >= head_timeout, "{cut_after:?}");
    let (head, _) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client is served once the slot is free")
        .expect("task");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let fd = p.shim.app.metrics.front_door();
    assert_eq!(fd.tls_handshakes_failed.load(Ordering::Relaxed), 1);
    assert_eq!(fd.tls_handshakes_ok.load(Ordering::Relaxed), 1);
    // A client that does not trust the certificate: the failed handshake is counted too.
    let stranger = Ca::new("another CA");
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    assert!(handshake(tcp, client_config(&stranger, &[H11], BOTH))
        .await
        .is_err());
    for _ in 0..500 {
        if fd.tls_handshakes_failed.load(Ordering::Relaxed) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fd.tls_handshakes_failed.load(Ordering::Relaxed), 2);
    // The metric, as scraped.
    let m = client()
        .get(format!("{}/metrics", p.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("rcshim_tls_handshakes_total{outcome=\"failed\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn handshake_and_first_head_share_the_deadline_from_accept() {
    let dir = proc::tempdir("tls-deadline");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_files(&dir, "one", 2030);
    let head_timeout = Duration::from_secs(1);
    let p = start_tls(&leaf, |c| c.server.header_read_timeout = head_timeout).await;
    let started = Instant::now();
    let tcp = TcpStream::connect(p.shim.addr).await.expect("connect");
    let mut s = handshake(tcp, client_config(&ca, &[H11], BOTH))
        .await
        .expect("handshake");
    // No request head: the connection is closed by the same deadline, without an answer.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("cut")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= head_timeout);
}

#[test]
fn the_tls_section_parses_and_needs_both_files() {
    let path = std::path::Path::new("c.toml");
    let c = Config::parse(
        "[server]\nproxy_protocol = true\n[server.tls]\ncert_file = \"a.pem\"\nkey_file = \"b.pem\"\n",
        path,
    )
    .expect("valid");
    assert!(c.server.proxy_protocol);
    let tls = c.server.tls.expect("tls");
    assert_eq!(tls.cert_file, std::path::PathBuf::from("a.pem"));
    assert_eq!(tls.key_file, std::path::PathBuf::from("b.pem"));
    let e = Config::parse("[server.tls]\ncert_file = \"a.pem\"\n", path)
        .expect_err("no key")
        .to_string();
    assert!(e.contains("server.tls.key_file"), "{e}");
    let e = Config::parse("[server.tls]\ncert = \"a.pem\"\n", path)
        .expect_err("unknown key")
        .to_string();
    assert!(e.contains("unknown field"), "{e}");
    // The files are not read by `parse` (only at start, on reload and by `check`).
    assert_eq!(Config::default().server.tls, None);
    assert!(!Config::default().server.proxy_protocol);
}
