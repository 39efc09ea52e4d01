//! Public-key tokens: a PEM key from a file (ES256), a JWKS over HTTPS (Ed25519 and P-256 keys
//! generated here, served by a TLS server in the test with a CA made at test time), key
//! rotation through an unknown `kid`, a JWKS server that goes away, and the algorithm-confusion
//! attack (an HS256 token "signed" with the public key).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::{TlsAcceptor, rustls};
use wsgw::config::JwtAlgorithm;

use crate::support::{Client, TestNode};

/// A signing key made here: what signs tokens, and its public half as PEM and as a JWK.
struct Signer {
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
    jwk: serde_json::Value,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn es256(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
        let raw = kp.public_key_raw(); // 0x04 ‖ X ‖ Y
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])});
        let encoding = EncodingKey::from_ec_der(&kp.serialize_der());
        Self { alg: Algorithm::ES256, encoding, public_pem: kp.public_key_pem(), jwk }
    }

    fn ed25519(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64url(kp.public_key_raw())});
        let encoding = EncodingKey::from_ed_der(&kp.serialize_der());
        Self { alg: Algorithm::EdDSA, encoding, public_pem: kp.public_key_pem(), jwk }
    }

    /// A token for user 7 of biz 9, valid for an hour, with `kid` in its header.
    fn token(&self, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let claims = json!({"user_id": 7, "biz_id": 9, "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign")
    }
}

/// An HTTPS server answering every request with the current JWKS document (`set`), counting
/// requests; its certificate is signed by a CA made here (`ca_pem`).
struct JwksServer {
    url: String,
    ca_pem: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &[&Signer]) -> Self {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ca.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ca.cert.der().clone()], key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url =
            format!("https://localhost:{}/jwks.json", listener.local_addr().expect("addr").port());
        let document = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                count.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().expect("lock").clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        let server = Self { url, ca_pem: ca.cert.pem(), document, fetches, task };
        server.set(keys);
        server
    }

    fn set(&self, keys: &[&Signer]) {
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        *self.document.lock().expect("lock") = jwks.to_string();
    }
}

async fn accepted(node: &TestNode, token: &str) -> bool {
    Client::connect(&node.url(&format!("?token={token}"))).await.is_ok()
}

#[tokio::test]
async fn a_public_key_from_a_file_verifies_its_tokens_and_nothing_else() {
    let signer = Signer::es256("unused");
    let other = Signer::es256("unused");
    let dir = tempfile::tempdir().expect("tmp");
    let pem = dir.path().join("idp.pem");
    std::fs::write(&pem, &signer.public_pem).expect("write");
    let file = pem.clone();
    let node = TestNode::builder()
        .config(move |c| {
            c.auth.jwt.public_key = Some(file);
            c.auth.jwt.algorithms = vec![JwtAlgorithm::HS256, JwtAlgorithm::ES256];
        })
        .spawn()
        .await;
    assert!(accepted(&node, &signer.token(None)).await, "the key's own token");
    assert!(accepted(&node, &TestNode::token(1, 9)).await, "HMAC tokens still work");
    assert!(!accepted(&node, &other.token(None)).await, "another key's token");
    // Algorithm confusion: an HS256 token whose "secret" is the public key the node holds.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let claims = json!({"user_id": 7, "biz_id": 9, "exp": now + 60});
    let key = EncodingKey::from_secret(signer.public_pem.as_bytes()).expect("key");
    let forged = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign");
    assert!(!accepted(&node, &forged).await, "an HS256 token keyed with the public key");
}

#[tokio::test]
async fn jwks_keys_are_fetched_over_https_selected_by_kid_and_rotated() {
    let (ed, ec) = (Signer::ed25519("ed-1"), Signer::es256("ec-1"));
    let server = JwksServer::start(&[&ed, &ec]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("write");
    let url = server.url.clone();
    let node = TestNode::builder()
        .config(move |c| {
            c.auth.jwt.jwks.url = url;
            c.auth.jwt.jwks.ca = Some(ca);
            c.auth.jwt.jwks.min_refresh = Duration::from_millis(200);
            c.auth.jwt.algorithms =
                vec![JwtAlgorithm::HS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA];
        })
        .spawn()
        .await;
    let loaded = "websocket_gateway_jwks_refreshes_total{outcome=\"ok\"}";
    crate::assert_within!(10, node.metric(loaded).await >= 1.0, "the JWKS was never loaded");
    assert!(accepted(&node, &ed.token(Some("ed-1"))).await, "Ed25519 key by kid");
    assert!(accepted(&node, &ec.token(Some("ec-1"))).await, "P-256 key by kid");
    assert!(!accepted(&node, &ec.token(Some("ed-1"))).await, "a kid of another key");
    assert!(!accepted(&node, &ec.token(None)).await, "no kid, and no key without one");

    // The provider rotates: a new key appears; its first token asks for an early fetch.
    let fresh = Signer::es256("ec-2");
    server.set(&[&ec, &fresh]);
    let before = server.fetches.load(Ordering::SeqCst);
    assert!(!accepted(&node, &fresh.token(Some("ec-2"))).await, "unknown until fetched");
    crate::assert_within!(5, server.fetches.load(Ordering::SeqCst) > before, "no early fetch");
    crate::assert_within!(5, accepted(&node, &fresh.token(Some("ec-2"))).await, "rotated key");

    // The JWKS server goes away: the last good keys stay.
    server.task.abort();
    tokio::time::sleep(Duration::from_millis(600)).await; // a few failed early fetches
    let _ = accepted(&node, &ed.token(Some("ed-gone"))).await;
    crate::assert_within!(
        5,
        node.metric("websocket_gateway_jwks_refreshes_total{outcome=\"failed\"}").await >= 1.0,
        "the failed fetch is counted"
    );
    assert!(accepted(&node, &fresh.token(Some("ec-2"))).await, "kept after a failed fetch");
    assert!(!accepted(&node, &ed.token(Some("ed-1"))).await, "rotated out before the outage");
}
