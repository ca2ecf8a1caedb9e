//! The front door (spec section 10): what happens on a client connection before hyper sees
//! its first byte — the PROXY protocol header (when `server.proxy_protocol` is on) and the TLS
//! handshake (when `[server.tls]` is set), in that order.
//!
//! Both are bounded by the connection's head deadline, counted from the TCP accept: the PROXY
//! header, the handshake and the first request head together get `header_read_timeout`, and
//! the connection holds its `max_connections` slot no longer than that. A refused connection
//! is closed without an answer (there is no protocol yet in which to answer) and counted.
//!
//! The PROXY header is parsed by the `ppp` crate; this module only decides how many bytes to
//! read (up to the header's end: the v1 line feed or the v2 length) and replays whatever was
//! read past the header to what comes next ([`Rewind`]), so no byte of the TLS ClientHello or
//! the request is lost.
//!
//! The TLS pair is loaded into a rustls `ServerConfig` per configuration generation, so a
//! reload (SIGHUP) re-reads both files: new connections take the generation's config, open
//! ones keep the one they were accepted with, and a pair that does not load refuses the reload
//! (the old generation, and its pair, stay).

use std::io::{self, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsConfig};
use crate::headers;
use crate::metrics::Metrics;

/// A loaded certificate pair, ready to serve.
pub struct TlsServer {
    /// The rustls configuration new connections are accepted with.
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's `notAfter`, in Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads and checks the pair named by `[server.tls]`: a PEM chain (leaf first) and a PEM key
/// (PKCS#8, PKCS#1 or SEC1) that matches the leaf. The error says which file and why.
pub fn load_tls(tls: &TlsConfig) -> Result<TlsServer, String> {
    let cert_path = tls.cert_file.display();
    let key_path = tls.key_file.display();
    let chain = read_file(&tls.cert_file, "server.tls.cert_file").and_then(|bytes| {
        rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("server.tls.cert_file {cert_path}: not PEM: {e}"))
    })?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "server.tls.cert_file {cert_path}: no PEM certificate in it"
        ));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("server.tls.cert_file {cert_path}: unreadable certificate: {e}"))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = read_file(&tls.key_file, "server.tls.key_file").and_then(|bytes| {
        rustls_pemfile::private_key(&mut BufReader::new(bytes.as_slice()))
            .map_err(|e| format!("server.tls.key_file {key_path}: not PEM: {e}"))?
            .ok_or_else(|| {
                format!(
                    "server.tls.key_file {key_path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"
                )
            })
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "server.tls: the key in {key_path} does not match the certificate in {cert_path}"
            ),
            e => format!("server.tls: {cert_path} and {key_path} do not make a pair: {e}"),
        })?;
    // h2 first: a client that offers both gets HTTP/2 (hyper detects it by the preface).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsServer {
        config: Arc::new(config),
        not_after,
    })
}

fn read_file(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// The `check` command's look at the files a valid config names (the TLS pair); `Err` says
/// what is wrong, as a start would.
pub fn check_files(config: &Config) -> Result<(), String> {
    match &config.server.tls {
        Some(tls) => load_tls(tls).map(|_| ()),
        None => Ok(()),
    }
}

/// What a new connection must go through, taken from the generation current at its accept.
#[derive(Clone)]
pub struct FrontDoor {
    /// The TLS pair, when `[server.tls]` is set.
    pub tls: Option<Arc<TlsServer>>,
    /// `server.proxy_protocol`.
    pub proxy_protocol: bool,
    /// `server.trusted_proxies`: the peers that must send a PROXY header.
    pub trusted: Vec<IpNet>,
}

/// Why a connection was closed before hyper saw it (logged at debug level).
#[derive(Debug)]
pub enum Refused {
    /// PROXY header missing, malformed, late, or sent by an untrusted peer.
    Proxy(String),
    /// TLS handshake failed or did not finish in time.
    Tls(String),
}

/// The client side of a connection after the front door: replayed bytes first, then the
/// socket, in the clear or through TLS.
pub enum ClientIo {
    Plain(Rewind<TcpStream>),
    Tls(Box<TlsStream<Rewind<TcpStream>>>),
}

/// Runs the front door on an accepted connection: the PROXY header (when expected), then the
/// TLS handshake (when configured), both by `deadline`. Returns the stream for hyper and the
/// client address (the PROXY source, or the peer). Refusals are counted here.
pub async fn open(
    mut stream: TcpStream,
    peer: SocketAddr,
    door: &FrontDoor,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<(ClientIo, SocketAddr), Refused> {
    let counters = metrics.front_door();
    let mut client = peer;
    let mut replay = Vec::new();
    if door.proxy_protocol {
        let required = headers::is_trusted(peer.ip(), &door.trusted);
        let read =
            tokio::time::timeout_at(deadline, read_proxy_header(&mut stream, required)).await;
        match read {
            Ok(Ok((source, rest))) => {
                if let Some(source) = source {
                    client = source;
                }
                replay = rest;
            }
            Ok(Err(why)) => {
                counters.proxy_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Proxy(why));
            }
            // A silent untrusted peer owed no header: it is only a client without a head in
            // time, closed as the head bound would have closed it, and not a PROXY refusal.
            Err(_) if !required => {
                return Err(Refused::Proxy("no request head in time".into()));
            }
            Err(_) => {
                counters.proxy_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Proxy(
                    "no PROXY header within header_read_timeout".into(),
                ));
            }
        }
        if required {
            counters.proxy_accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
    let Some(tls) = &door.tls else {
        return Ok((ClientIo::Plain(Rewind::new(stream, replay)), client));
    };
    if replay.is_empty() {
        // A connection closed before its first byte (a balancer's TCP health check, a port
        // probe) never tried a handshake: closed, not counted as a failed one. A silent one
        // is cut at the deadline and counted.
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Refused::Tls("closed before a ClientHello".into()));
            }
            Ok(Ok(_)) => {}
            Err(_) => {
                counters
                    .tls_handshakes_failed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Tls(
                    "no ClientHello within header_read_timeout".into(),
                ));
            }
        }
    }
    let io = Rewind::new(stream, replay);
    let acceptor = TlsAcceptor::from(tls.config.clone());
    match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        Ok(Ok(s)) => {
            counters.tls_handshakes_ok.fetch_add(1, Ordering::Relaxed);
            Ok((ClientIo::Tls(Box::new(s)), client))
        }
        Ok(Err(e)) => {
            counters
                .tls_handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            Err(Refused::Tls(e.to_string()))
        }
        Err(_) => {
            counters
                .tls_handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            Err(Refused::Tls(
                "handshake not finished within header_read_timeout".into(),
            ))
        }
    }
}

/// The v1 signature (the text line starts with it).
const V1_SIG: &[u8] = b"PROXY ";
/// The v2 signature (RFC-like spec of the PROXY protocol, section 2.2).
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, line end included.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header; its last two bytes give the length of the rest.
const V2_FIXED: usize = 16;

/// Which header, if any, the first bytes announce.
#[derive(Debug, PartialEq)]
enum Signature {
    V1,
    V2,
    None,
    /// Too few bytes to tell.
    Unknown,
}

fn signature(buf: &[u8]) -> Signature {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    match (matches(V1_SIG), matches(V2_SIG)) {
        (true, _) if buf.len() >= V1_SIG.len() => Signature::V1,
        (_, true) if buf.len() >= V2_SIG.len() => Signature::V2,
        (false, false) => Signature::None,
        _ => Signature::Unknown,
    }
}

/// Reads up to the end of a PROXY header. `required`: the peer is trusted and must send one;
/// otherwise it must not (a header from an untrusted peer is a forgery attempt). Returns the
/// source address to use (`None`: keep the peer's, as for LOCAL or UNKNOWN) and the bytes
/// read past the header.
async fn read_proxy_header(
    stream: &mut TcpStream,
    required: bool,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        match signature(&buf) {
            Signature::None if required => {
                return Err("the connection does not start with a PROXY header".into())
            }
            Signature::None => return Ok((None, buf)),
            Signature::V1 | Signature::V2 if !required => {
                return Err("a PROXY header from a peer outside trusted_proxies".into())
            }
            Signature::V1 => {
                if let Some(end) = memchr::memchr(b'\n', &buf) {
                    let source = parse_v1(&buf[..=end])?;
                    return Ok((source, buf.split_off(end + 1)));
                }
                if buf.len() >= V1_MAX {
                    return Err("a PROXY v1 header longer than 107 bytes".into());
                }
            }
            Signature::V2 if buf.len() >= V2_FIXED => {
                let end = V2_FIXED + u16::from_be_bytes([buf[14], buf[15]]) as usize;
                if buf.len() >= end {
                    let source = parse_v2(&buf[..end])?;
                    return Ok((source, buf.split_off(end)));
                }
            }
            Signature::V2 | Signature::Unknown => {}
        }
        // Read what is there (more than the header, maybe: the rest is replayed).
        buf.reserve(512);
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read error before the PROXY header ended: {e}"))?;
        if n == 0 {
            if !required && signature(&buf) == Signature::Unknown {
                // An untrusted peer that closed early: hyper sees the same bytes and the end.
                return Ok((None, buf));
            }
            return Err("the connection closed before a complete PROXY header".into());
        }
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, String> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(|e| format!("a malformed PROXY v1 header: {e}"))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        // "UNKNOWN": the receiver must use the real connection's addresses.
        Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, String> {
    use ppp::v2::{Addresses, Command, Header};
    let header =
        Header::try_from(bytes).map_err(|e| format!("a malformed PROXY v2 header: {e}"))?;
    if header.command == Command::Local {
        // Health checks of the balancer itself: the peer is the client.
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        // Unix sockets or unspecified: no IP to use, keep the peer's.
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// A stream that first yields bytes already read from it (past a PROXY header), then reads
/// on. Writes go straight through.
pub struct Rewind<T> {
    pre: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, with `pre` to be read first.
    pub fn new(inner: T, pre: Vec<u8>) -> Self {
        Rewind { pre, pos: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.pre.len() {
            let n = (this.pre.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.pre[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pre.len() {
                // Done replaying: give the memory back.
                this.pre = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl ClientIo {
    /// Whether the connection came through TLS (`X-Forwarded-Proto: https`).
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_told_apart_from_requests() {
        assert_eq!(signature(b""), Signature::Unknown);
        assert_eq!(signature(b"P"), Signature::Unknown);
        assert_eq!(signature(b"PROXY"), Signature::Unknown);
        assert_eq!(signature(b"PROXY TCP4"), Signature::V1);
        assert_eq!(signature(b"POST / HTTP/1.1"), Signature::None);
        assert_eq!(signature(b"PRI * HTTP/2.0"), Signature::None);
        assert_eq!(signature(b"\x16\x03\x01"), Signature::None);
        assert_eq!(signature(b"\r\n\r\n"), Signature::Unknown);
        assert_eq!(signature(b"\r\n\r\n\0\r\nQUIT\n!"), Signature::V2);
        assert_eq!(signature(b"\r\n\r\nGET"), Signature::None);
    }

    #[test]
    fn v1_and_v2_sources() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n").expect("v1"),
            Some("203.0.113.7:5555".parse().expect("addr"))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").expect("v1"), None);
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
        let v2 = ppp::v2::Builder::with_addresses(
            0x21,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:6000".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::1]:443".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("build");
        assert_eq!(
            parse_v2(&v2).expect("v2"),
            Some("[2001:db8::7]:6000".parse().expect("addr"))
        );
        let local = ppp::v2::Builder::with_addresses(
            0x20,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("build");
        assert_eq!(parse_v2(&local).expect("local"), None);
    }
}
