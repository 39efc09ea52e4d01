//! `wss://`: clients over TLS with certificates generated here, a certificate replaced on disk
//! while connections stay up, a broken file that keeps the old certificate, and plain clients
//! refused on the TLS port.

use std::{path::Path, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message as WsMessage};

use crate::support::{Client, TestNode};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A self-signed certificate for localhost: (cert PEM, key PEM, cert DER).
fn certificate() -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem(), c.cert.der().to_vec())
}

fn write(dir: &Path, (cert, key): (&str, &str)) {
    // Written aside and renamed, as a certificate manager does: never a half-written file.
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

/// Connects over TLS trusting `ca` (DER); the WebSocket and the certificate the node showed.
async fn connect(node: &TestNode, ca: &[u8], user: i64) -> (Wss, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    roots.add(ca.to_vec().into()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(node.ws_addr).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let shown = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    let url =
        format!("wss://localhost:{}/?token={}", node.ws_addr.port(), TestNode::token(user, 9));
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("upgrade over TLS");
    (ws, shown)
}

/// A heartbeat is echoed: the connection serves.
async fn heartbeat(ws: &mut Wss) {
    let beat = r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"hb"}"#;
    ws.send(WsMessage::text(beat)).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await.expect("open").expect("frame") {
                WsMessage::Binary(b) => return b,
                WsMessage::Text(t) => return t.as_bytes().to_vec().into(),
                _ => continue,
            }
        }
    })
    .await
    .expect("an answer in time");
    assert!(String::from_utf8_lossy(&reply).contains("HEARTBEAT"), "{reply:?}");
}

#[tokio::test]
async fn clients_connect_over_tls_and_a_replaced_certificate_applies_to_new_ones_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert1, key1, der1) = certificate();
    write(dir.path(), (&cert1, &key1));
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let node = TestNode::builder()
        .config(|c| {
            let tls = &mut c.server.websocket.tls;
            tls.cert = cert_path.to_string_lossy().into_owned();
            tls.key = key_path.to_string_lossy().into_owned();
            tls.reload_check = Duration::from_millis(50);
        })
        .spawn()
        .await;
    let (mut first, shown) = connect(&node, &der1, 1).await;
    assert_eq!(shown, der1);
    heartbeat(&mut first).await;

    // A plain client on the TLS port gets no WebSocket, and the node says why.
    assert!(
        Client::connect(&node.url(&format!("?token={}", TestNode::token(2, 9)))).await.is_err()
    );
    let tls_failed = "websocket_gateway_handshakes_total{outcome=\"tls_failed\"}";
    crate::assert_eventually!(node.metric(tls_failed).await == 1.0, "the plain client counted");

    // The certificate is replaced on disk: new connections get the new one, the open one stays.
    let (cert2, key2, der2) = certificate();
    write(dir.path(), (&cert2, &key2));
    let reloaded = "websocket_gateway_tls_reloads_total{outcome=\"ok\"}";
    crate::assert_eventually!(node.metric(reloaded).await == 1.0, "the new files were loaded");
    let (mut second, shown) = connect(&node, &der2, 3).await;
    assert_eq!(shown, der2, "a new connection gets the new certificate");
    heartbeat(&mut second).await;
    heartbeat(&mut first).await;

    // A broken file is not applied: the last good certificate stays in use.
    std::fs::write(&cert_path, "not a certificate").expect("write");
    let failed = "websocket_gateway_tls_reloads_total{outcome=\"failed\"}";
    crate::assert_eventually!(node.metric(failed).await >= 1.0, "the broken file was refused");
    let (mut third, shown) = connect(&node, &der2, 4).await;
    assert_eq!(shown, der2);
    heartbeat(&mut third).await;
    assert_eq!(node.handle.connections(), 3);
}

#[tokio::test]
async fn a_missing_or_broken_certificate_stops_the_node_at_start_with_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = TestNode::builder().config;
    config.server.websocket.tls.cert = dir.path().join("absent.pem").to_string_lossy().into();
    config.server.websocket.tls.key = dir.path().join("absent.key").to_string_lossy().into();
    let err = wsgw::node::Node::bind(config.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("server.websocket.tls.cert"), "{err}");
    let (cert, _, _) = certificate();
    write(dir.path(), (&cert, "no key here"));
    config.server.websocket.tls.cert = dir.path().join("cert.pem").to_string_lossy().into();
    config.server.websocket.tls.key = dir.path().join("key.pem").to_string_lossy().into();
    let err = wsgw::node::Node::bind(config).await.err().expect("refused");
    assert!(err.to_string().contains("server.websocket.tls.key"), "{err}");
}
