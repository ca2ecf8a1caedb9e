//! Criterion micro-benchmarks of the per-request hot paths: path classification, parameter
//! parsing and canonicalisation, the policy decision, header rewriting, the request id and the
//! cache-key build.
//!
//! `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use rocketchat_shim::cache::ResponseCache;
use rocketchat_shim::config::{ErrorStyle, ParamsConfig};
use rocketchat_shim::dm_history::params::{CanonicalQuery, RawQuery};
use rocketchat_shim::dm_history::policy::{decide, Identity};
use rocketchat_shim::headers::{client_ip, request_id, set_forwarding, strip_hop_by_hop};
use rocketchat_shim::route::{classify, normalize};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

/// What a browser or REST client typically sends on a pass-through request.
fn browser_headers() -> HeaderMap {
    headers(&[
        ("host", "chat.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("x-user-id", "admin-id"),
        (
            "x-auth-token",
            "9HqLlyZOugoStsXCUfD_0YdwnNnunAJF8V47U3QHXSq",
        ),
        ("connection", "keep-alive"),
        (
            "cookie",
            "rc_uid=admin-id; rc_token=9HqLlyZOugoStsXCUfD_0YdwnNnunAJF8V47U3QHXSq",
        ),
        ("referer", "https://chat.example.com/direct/alice-idbob-id"),
    ])
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let cases = [
        ("classify/passthrough_api", "/api/v1/channels.messages"),
        (
            "classify/passthrough_upload",
            "/file-upload/6gK2j7QwYb/Screenshot%202024-01-01%20at%2012.00.00.png",
        ),
        ("classify/endpoint_plain", "/api/v1/im.messages.others"),
        (
            "classify/endpoint_disguised",
            "/api//v1/./%2e%2e/v1/IM.Messages.Others%2F;x=1/",
        ),
    ];
    for (name, path) in cases {
        g.bench_function(name, |b| {
            b.iter(|| classify(black_box(path), black_box(""), black_box(true)))
        });
    }
    g.bench_function("classify/endpoint_with_prefix", |b| {
        b.iter(|| {
            classify(
                black_box("/chat/api/v1/dm.messages.others"),
                black_box("/chat"),
                black_box(false),
            )
        })
    });
    g.bench_function("normalize/decorated", |b| {
        b.iter(|| normalize(black_box("/API/v1/%252e%252E/v1//im.messages.others/ ")))
    });
    g.finish();
}

fn bench_params(c: &mut Criterion) {
    let cfg = ParamsConfig::default();
    let simple = "roomId=alice-idbob-id";
    let full = "roomId=alice-idbob-id&offset=20&count=50&sort=%7B%22ts%22%3A-1%7D\
        &query=%7B%22msg%22%3A%7B%22%24regex%22%3A%22hello%22%2C%22%24options%22%3A%22i%22%7D%2C%22u.username%22%3A%22bob%22%7D\
        &fields=%7B%22msg%22%3A1%2C%22ts%22%3A1%7D&access_token=abcdef0123456789";
    let mut g = c.benchmark_group("params");
    g.bench_function("raw_parse/simple", |b| {
        b.iter(|| RawQuery::parse(black_box(Some(simple))))
    });
    g.bench_function("raw_parse/full", |b| {
        b.iter(|| RawQuery::parse(black_box(Some(full))))
    });
    let raw_simple = RawQuery::parse(Some(simple)).expect("simple parses");
    let raw_full = RawQuery::parse(Some(full)).expect("full parses");
    g.bench_function("canonical/simple", |b| {
        b.iter(|| CanonicalQuery::from_raw(black_box(&raw_simple), black_box(&cfg)))
    });
    g.bench_function("canonical/full", |b| {
        b.iter(|| CanonicalQuery::from_raw(black_box(&raw_full), black_box(&cfg)))
    });
    let canon = CanonicalQuery::from_raw(&raw_full, &cfg).expect("full is valid");
    g.bench_function("to_query_string/full", |b| {
        b.iter(|| black_box(&canon).to_query_string())
    });
    g.bench_function("parse_and_canonicalise/simple", |b| {
        b.iter(|| {
            let raw = RawQuery::parse(black_box(Some(simple)))?;
            let q = CanonicalQuery::from_raw(&raw, &cfg)?;
            Ok::<_, rocketchat_shim::error::ApiError>((q.to_query_string(), q.cache_key()))
        })
    });
    g.finish();
}

fn bench_policy(c: &mut Criterion) {
    let admin = Identity {
        user_id: "admin-id".into(),
        username: "admin".into(),
        roles: vec!["user".into(), "admin".into()],
    };
    let plain = Identity {
        user_id: "alice-id".into(),
        username: "alice".into(),
        roles: vec!["user".into()],
    };
    let roles = vec!["admin".to_string(), "auditor".to_string()];
    let mut g = c.benchmark_group("policy");
    g.bench_function("decide/allowed", |b| {
        b.iter(|| {
            decide(
                black_box(ErrorStyle::Modern),
                black_box(Some(&admin)),
                black_box(&roles),
                black_box(true),
            )
        })
    });
    g.bench_function("decide/forbidden", |b| {
        b.iter(|| {
            decide(
                black_box(ErrorStyle::Modern),
                black_box(Some(&plain)),
                black_box(&roles),
                black_box(true),
            )
        })
    });
    g.bench_function("decide/not_logged_in", |b| {
        b.iter(|| {
            decide(
                black_box(ErrorStyle::Legacy),
                black_box(None),
                black_box(&roles),
                black_box(true),
            )
        })
    });
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let trusted: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("net"),
        "10.0.0.0/8".parse().expect("net"),
    ];
    let plain = browser_headers();
    let mut forwarded = browser_headers();
    forwarded.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("203.0.113.7, 10.1.2.3"),
    );
    let host = plain.get("host").cloned();
    let mut g = c.benchmark_group("headers");
    // Each iteration clones the request's headers (as a fresh request would own them) and
    // rewrites the clone; `clone_baseline` is that clone alone, to subtract. (Batched setup
    // would keep thousands of maps alive and measure page faults of their growth instead.)
    g.bench_function("clone_baseline", |b| b.iter(|| black_box(&plain).clone()));
    g.bench_function("strip_hop_by_hop/browser", |b| {
        b.iter(|| {
            let mut h = black_box(&plain).clone();
            strip_hop_by_hop(&mut h);
            h
        })
    });
    let mut no_connection = plain.clone();
    no_connection.remove("connection");
    g.bench_function("strip_hop_by_hop/no_connection", |b| {
        b.iter(|| {
            let mut h = black_box(&no_connection).clone();
            strip_hop_by_hop(&mut h);
            h
        })
    });
    g.bench_function("set_forwarding/untrusted_peer", |b| {
        b.iter(|| {
            let mut h = black_box(&plain).clone();
            set_forwarding(&mut h, peer, peer, false, host.as_ref(), false);
            h
        })
    });
    g.bench_function("set_forwarding/trusted_peer_with_xff", |b| {
        let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        b.iter(|| {
            let mut h = black_box(&forwarded).clone();
            set_forwarding(&mut h, peer, client, true, host.as_ref(), false);
            h
        })
    });
    g.bench_function("client_ip/no_trusted_proxies", |b| {
        b.iter(|| client_ip(black_box(peer), black_box(&plain), black_box(&[])))
    });
    g.bench_function("client_ip/trusted_xff_chain", |b| {
        b.iter(|| client_ip(black_box(peer), black_box(&forwarded), black_box(&trusted)))
    });
    g.bench_function("request_id/new", |b| {
        b.iter(|| request_id(black_box(&plain)))
    });
    g.finish();
}

fn bench_cache_key(c: &mut Criterion) {
    let cfg = ParamsConfig::default();
    let raw = RawQuery::parse(Some(
        "roomId=alice-idbob-id&count=20&sort=%7B%22ts%22%3A-1%7D",
    ))
    .expect("parses");
    let canon = CanonicalQuery::from_raw(&raw, &cfg).expect("valid");
    let key_part = canon.cache_key();
    let mut g = c.benchmark_group("cache");
    g.bench_function("key/build", |b| {
        b.iter(|| ResponseCache::key(black_box("admin-id"), black_box(&key_part)))
    });
    g.bench_function("key/from_canonical", |b| {
        b.iter(|| ResponseCache::key(black_box("admin-id"), &black_box(&canon).cache_key()))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_route,
    bench_params,
    bench_policy,
    bench_headers,
    bench_cache_key
);
criterion_main!(benches);
