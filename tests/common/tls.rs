//! TLS helpers for the front-door tests (tests/tls_listener.rs, tests/proxy_protocol.rs): a
//! private CA made with rcgen, leaf certificates for 127.0.0.1 written as PEM files, and a
//! rustls client that trusts the CA and offers the ALPN protocols a test asks for.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A private certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Ca {
    /// A fresh CA (ECDSA P-256) named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("ca cert");
        Ca { cert, key }
    }

    /// A leaf for 127.0.0.1 and localhost signed with `key`, with common name `cn` and the
    /// given `notAfter` year.
    pub fn leaf_with(&self, key: &KeyPair, cn: &str, year: i32) -> rcgen::Certificate {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(year, 1, 1);
        p.signed_by(key, &self.cert, &self.key).expect("leaf")
    }

    /// A leaf (ECDSA P-256, PKCS#8 key) written to `dir/name.crt` and `dir/name.key`.
    pub fn leaf_files(&self, dir: &Path, name: &str, year: i32) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = self.leaf_with(&key, name, year);
        Leaf::write(dir, name, &cert, &key.serialize_pem())
    }

    /// The CA certificate as a rustls trust root.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// A certificate and key on disk.
pub struct Leaf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leaf's DER, to compare with what a client was served.
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes the chain (leaf only) and `key_pem` as `dir/name.crt` and `dir/name.key`.
    pub fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key_pem: &str) -> Leaf {
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key_pem).expect("write key");
        Leaf {
            cert_file,
            key_file,
            der: cert.der().to_vec(),
        }
    }

    /// The `[server.tls]` section naming these files.
    pub fn config(&self) -> rocketchat_shim::config::TlsConfig {
        rocketchat_shim::config::TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// A rustls client trusting `ca`, offering `alpn` and the given protocol versions.
pub fn client_config(
    ca: &Ca,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection (TLS 1.2 or 1.3) to `addr` over `tcp`, verifying 127.0.0.1 against `ca`.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().expect("ip").into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented on `s`.
pub fn served_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// Sends one HTTP/1.1 request on `s` (keep-alive) and reads one whole response with a
/// `Content-Length` body; returns the status line, the head and the body.
pub async fn http11<S>(s: &mut S, path: &str) -> (String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    for _ in 0..1000 {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (head, body);
            }
        }
        let n = s.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no complete response");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The SEC1 `ECPrivateKey` inside a PKCS#8 EC key (DER), as a PEM "EC PRIVATE KEY".
pub fn sec1_pem_from_pkcs8(pkcs8: &[u8]) -> String {
    // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING }
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let mut l = 0usize;
            for x in &b[2..2 + n] {
                l = (l << 8) | *x as usize;
            }
            (l, 2 + n)
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, info, _) = tlv(pkcs8);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, sec1, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey OCTET STRING");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
    let mut out = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END EC PRIVATE KEY-----\n");
    out
}
