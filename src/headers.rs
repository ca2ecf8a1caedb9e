//! Header hygiene for forwarded messages: hop-by-hop removal, the `X-Forwarded-*` family,
//! `X-Real-IP` and the request id.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`: Rocket.Chat rate-limits by it, so the shim always sets it itself.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-Id`: kept from the client when sane, made otherwise, returned to the client.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: those named by `Connection` and the fixed list of
/// RFC 9110 §7.6.1 (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`). "A proxy or gateway MUST parse a received Connection
/// header field before a message is forwarded and, for each connection-option in this field,
/// remove any header or trailer field(s) from the message with the same name."
///
/// Every other header keeps its place and all its values: `HeaderMap::remove` would move the
/// map's last entry into the gap (`X-A, Connection, X-B, X-C, X-D` would leave as
/// `x-a, x-d, x-b, x-c`), so when anything is to go the map is rebuilt in order instead.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const FIXED: [&HeaderName; 6] = [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ];
    // Fast path: most messages carry none of them.
    let has_connection = headers.contains_key(header::CONNECTION);
    if !has_connection && !FIXED.iter().any(|n| headers.contains_key(*n)) {
        return;
    }
    let named: Vec<HeaderName> = if has_connection {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    // `into_iter` yields each name once, followed by its further values with `None`.
    let mut keep = false;
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(name) = name {
            keep = name != header::CONNECTION && !FIXED.contains(&&name) && !named.contains(&name);
            current = Some(name);
        }
        if let (true, Some(name)) = (keep, &current) {
            headers.append(name.clone(), value);
        }
    }
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`),
/// read before the hop-by-hop headers are stripped.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Whether `ip` is covered by one of the trusted proxy networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical_ip(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as their IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself trusted (a client cannot choose it: entries left
/// of the first untrusted hop are the client's own words).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical_ip(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut last = peer;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match parse_forwarded_ip(entry) {
            Some(ip) if is_trusted(ip, trusted) => last = ip,
            Some(ip) => return ip,
            // An unparsable hop: stop believing anything further left.
            None => return last,
        }
    }
    last
}

/// One `X-Forwarded-For` entry: an IP, maybe with a port, maybe bracketed.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(canonical_ip(sa.ip()));
    }
    e.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical_ip)
}

/// Sets the forwarding headers of a request about to go upstream.
///
/// `X-Forwarded-For` gets the peer appended (the client's own value is dropped unless the peer
/// is trusted); `X-Real-IP` becomes the client address; `X-Forwarded-Proto` and
/// `X-Forwarded-Host` are set (kept only from a trusted peer); `https`: the client connection
/// came through the shim's own TLS.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
    https: bool,
) {
    let peer_s = ip_value(canonical_ip(peer));
    let client_s = ip_value(client);
    set_forwarding_values(headers, &peer_s, &client_s, peer_trusted, host, https);
}

/// [`set_forwarding`] with the peer's and the client's addresses already made header values
/// ([`ip_value`]): a connection makes its peer's once, not once per request.
pub fn set_forwarding_values(
    headers: &mut HeaderMap,
    peer_s: &HeaderValue,
    client_s: &HeaderValue,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
    https: bool,
) {
    if peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR).iter() {
            if let Ok(s) = v.to_str() {
                if !joined.is_empty() {
                    joined.push_str(", ");
                }
                joined.push_str(s.trim());
            }
        }
        joined.push_str(", ");
        joined.push_str(peer_s.to_str().unwrap_or_default());
        match HeaderValue::from_str(&joined) {
            Ok(v) => {
                headers.insert(&X_FORWARDED_FOR, v);
            }
            Err(_) => {
                headers.insert(&X_FORWARDED_FOR, peer_s.clone());
            }
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, peer_s.clone());
    }
    headers.insert(&X_REAL_IP, client_s.clone());
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if https { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// An address as a header value (one allocation: formatted on the stack).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest IPv6 text form is 45 bytes.
    let mut buf = [0u8; 64];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let n = match write!(cur, "{ip}") {
        Ok(()) => cur.position() as usize,
        Err(_) => 0,
    };
    // An IP address is always a valid header value.
    HeaderValue::from_bytes(&buf[..n]).unwrap_or(HeaderValue::from_static("0.0.0.0"))
}

/// The request id: the client's `X-Request-Id` when it is 1 to 128 visible ASCII characters,
/// otherwise a new random one (128 bits, hex).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = STATE.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut a = state.build_hasher();
    a.write_u64(n);
    let mut b = state.build_hasher();
    b.write_u64(!n);
    // Hex on the stack, no formatter.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, v) in [a.finish(), b.finish()].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    ID_CHUNK.with(|chunk| {
        let mut chunk = chunk.borrow_mut();
        if chunk.capacity() < buf.len() {
            *chunk = BytesMut::with_capacity(ID_CHUNK_BYTES);
        }
        chunk.extend_from_slice(&buf);
        HeaderValue::from_maybe_shared(chunk.split().freeze())
            .unwrap_or(HeaderValue::from_static("0"))
    })
}

/// Request ids are cut from a per-thread block of this size (32 ids): one allocation per
/// block, not one per request. The block lives while any id cut from it does (a tunnel keeps
/// its id), so it is kept small: at worst 1 KiB held by one long-lived id.
const ID_CHUNK_BYTES: usize = 1024;

thread_local! {
    static ID_CHUNK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "foo"),
            ("x-secret-hop", "1"),
            ("foo", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn stripping_keeps_the_order_and_every_value() {
        let mut h = map(&[
            ("x-a", "1"),
            ("connection", "keep-alive, X-Hop"),
            ("x-b", "2"),
            ("x-hop", "h"),
            ("set-cookie", "a=1"),
            ("x-c", "3"),
            ("set-cookie", "b=2"),
            ("te", "trailers"),
            ("x-d", "4"),
        ]);
        strip_hop_by_hop(&mut h);
        let pairs: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii")))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("x-a", "1"),
                ("x-b", "2"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-c", "3"),
                ("x-d", "4"),
            ]
        );
    }

    #[test]
    fn upgrade_detection() {
        assert!(upgrade_protocol(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ]))
        .is_some());
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn client_ip_rules() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.9")]);
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(client_ip(peer, &h, &trusted).to_string(), "1.2.3.4");
        let untrusted: IpAddr = "9.9.9.9".parse().expect("ip");
        assert_eq!(client_ip(untrusted, &h, &trusted).to_string(), "9.9.9.9");
        let only_trusted = map(&[("x-forwarded-for", "10.1.1.1")]);
        assert_eq!(
            client_ip(peer, &only_trusted, &trusted).to_string(),
            "10.1.1.1"
        );
        let garbage = map(&[("x-forwarded-for", "nonsense, 10.1.1.1")]);
        assert_eq!(client_ip(peer, &garbage, &trusted).to_string(), "10.1.1.1");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_ip(mapped, &h, &trusted).to_string(), "1.2.3.4");
    }

    #[test]
    fn forwarding_headers_untrusted_peer_overwrites() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        let host = HeaderValue::from_static("chat.example");
        set_forwarding(&mut h, peer, peer, false, Some(&host), false);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example");
    }

    #[test]
    fn forwarding_headers_trusted_peer_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let client: IpAddr = "1.2.3.4".parse().expect("ip");
        set_forwarding(&mut h, peer, client, true, None, false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids() {
        let kept = request_id(&map(&[("x-request-id", "abc-123")]));
        assert_eq!(kept, "abc-123");
        let made = request_id(&map(&[("x-request-id", "has space")]));
        assert_eq!(made.len(), 32);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
