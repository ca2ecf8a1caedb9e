//! An `https` upstream: the shim speaks TLS to it (pass-through, the endpoint, websockets),
//! trusts `upstream.ca_file`, and refuses an untrusted certificate with a 502.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rocketchat_shim::config::parse_upstream_url;
use rocketchat_shim::server;
use rocketchat_standin::Standin;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A TLS terminator in front of the stand-in, with a fresh self-signed certificate for
/// 127.0.0.1. Returns its port and the certificate's PEM.
async fn tls_front(standin: &Standin) -> (u16, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let backend = standin.addr();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let standin = Standin::start().await.expect("standin");
    let (port, pem) = tls_front(&standin).await;
    let dir = common::proc::tempdir("tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).expect("write ca");

    let mut config = base_config(&standin.url());
    config.upstream.url = parse_upstream_url(&format!("https://127.0.0.1:{port}")).expect("url");
    config.upstream.ca_file = ca.display().to_string();
    let shim = server::start(config).await.expect("shim");
    let base = format!("http://{}", shim.addr);

    let r = client()
        .get(format!("{base}/api/info"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = admin(client().get(format!(
        "{base}/api/v1/dm.messages.others?roomId=alice-idbob-id&count=3"
    )))
    .send()
    .await
    .expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["count"], 3);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/websocket", shim.addr))
        .await
        .expect("ws");
    ws.send(Message::Text("over tls".into()))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::Text("over tls".into())
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502() {
    let standin = Standin::start().await.expect("standin");
    let (port, _) = tls_front(&standin).await;
    let mut config = base_config(&standin.url());
    config.upstream.url = parse_upstream_url(&format!("https://127.0.0.1:{port}")).expect("url");
    let shim = server::start(config).await.expect("shim");
    let r = client()
        .get(format!("http://{}/api/info", shim.addr))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.text().await.expect("text"),
        r#"{"success":false,"error":"The upstream server could not be reached [error-bad-gateway]","errorType":"error-bad-gateway"}"#
    );
    assert_eq!(standin.count_path("/api/info"), 0);
}

#[test]
fn a_missing_ca_file_is_a_config_error() {
    let e = rocketchat_shim::config::Config::parse(
        "[upstream]\nurl = \"https://chat.example\"\nca_file = \"/nonexistent/ca.pem\"\n",
        std::path::Path::new("c.toml"),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.starts_with("c.toml: upstream.ca_file: cannot read"),
        "{e}"
    );
}
