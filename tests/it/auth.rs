//! Handshake authentication: every way in, every way refused.

use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;
use wsgw::protocol::Serializer;

use std::time::Duration;

use crate::support::{Client, SECRET, TestNode, code};

/// Connects and returns the HTTP refusal: (status, body, Retry-After).
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String, Option<String>) {
    match Client::connect_with(url, headers).await {
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
            let retry =
                resp.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
            (resp.status().as_u16(), body.unwrap_or_default(), retry)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, but the upgrade succeeded"),
    }
}

/// Signs `claims`, with an `exp` an hour from now unless they have one.
fn sign(mut claims: serde_json::Value, secret: &str) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    sign_raw(claims, secret)
}

fn sign_raw(claims: serde_json::Value, secret: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
}

fn now() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("after 1970").as_secs()
}

async fn heartbeat_works(client: &mut Client) {
    client.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"k1"}"#).await;
    let reply = client.recv_msg(Serializer::Json).await;
    assert_eq!(reply.key, "k1");
}

#[tokio::test]
async fn token_in_query_with_bearer_prefix_or_header_is_accepted_on_any_path() {
    let node = TestNode::spawn().await;
    let token = TestNode::token(42, 9999);
    for url in [
        node.url(&format!("?token={token}")),
        node.url(&format!("any/path?x=1&token=Bearer%20{token}")),
    ] {
        let mut c = Client::connect(&url).await.expect("accepted");
        heartbeat_works(&mut c).await;
    }
    let bearer = format!("Bearer {token}");
    let mut c =
        Client::connect_with(&node.url(""), &[("authorization", &bearer)]).await.expect("accepted");
    heartbeat_works(&mut c).await;
    assert_eq!(node.metric(r#"websocket_gateway_handshakes_total{outcome="ok"}"#).await, 3.0);
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_short_reason() {
    let node = TestNode::spawn().await;
    let cases = [
        ("".to_owned(), "missing token", "missing_token"),
        ("garbage".to_owned(), "invalid token", "bad_token"),
        (sign(json!({"user_id": 1, "biz_id": 2}), "wrong-secret"), "invalid token", "bad_token"),
        (sign(json!({"user_id": 1, "biz_id": 2, "exp": 1000}), SECRET), "token expired", "expired"),
        (
            sign(json!({"biz_id": 2}), SECRET),
            "invalid token claims: user_id is required",
            "bad_claims",
        ),
        (sign(json!({"user_id": 0, "biz_id": 2}), SECRET), "invalid token claims", "bad_claims"),
        (
            sign_raw(json!({"user_id": 1, "biz_id": 2}), SECRET),
            "invalid token claims: exp is required",
            "bad_claims",
        ),
        (
            sign(json!({"user_id": 1, "biz_id": 2, "exp": now() + 30 * 86400}), SECRET),
            "token lifetime exceeds the allowed maximum",
            "bad_claims",
        ),
        (
            sign(json!({"user_id": 1, "biz_id": 2, "nbf": now() + 600}), SECRET),
            "token not yet valid",
            "not_yet_valid",
        ),
    ];
    for (token, reason, _) in &cases {
        let (status, body, _) = refused(&node.url(&format!("?token={token}")), &[]).await;
        assert_eq!(status, 401, "{reason}");
        assert!(body.starts_with(reason), "{body:?} should start with {reason:?}");
        assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    }
    assert_eq!(
        node.metric(r#"websocket_gateway_handshakes_total{outcome="bad_token"}"#).await,
        2.0
    );
    assert_eq!(
        node.metric(r#"websocket_gateway_handshakes_total{outcome="bad_claims"}"#).await,
        4.0
    );
    assert_eq!(node.metric(r#"websocket_gateway_handshakes_total{outcome="expired"}"#).await, 1.0);
    let immature = r#"websocket_gateway_handshakes_total{outcome="not_yet_valid"}"#;
    assert_eq!(node.metric(immature).await, 1.0);
    assert_eq!(node.handle.connections(), 0);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let node = TestNode::builder()
        .config(|c| {
            c.auth.jwt.issuer = Some("im".into());
            c.auth.jwt.audience = Some("gw".into());
        })
        .spawn()
        .await;
    let good = sign(json!({"user_id": 1, "biz_id": 2, "iss": "im", "aud": "gw"}), SECRET);
    Client::connect(&node.url(&format!("?token={good}"))).await.expect("accepted");
    let wrong_iss = sign(json!({"user_id": 1, "biz_id": 2, "iss": "x", "aud": "gw"}), SECRET);
    let (status, body, _) = refused(&node.url(&format!("?token={wrong_iss}")), &[]).await;
    assert_eq!((status, body.trim()), (401, "invalid token issuer"));
    let no_aud = sign(json!({"user_id": 1, "biz_id": 2, "iss": "im"}), SECRET);
    let (status, body, _) = refused(&node.url(&format!("?token={no_aud}")), &[]).await;
    assert_eq!((status, body.trim()), (401, "invalid token audience"));
}

#[tokio::test]
async fn origins_outside_the_allowed_list_get_403() {
    let node = TestNode::builder()
        .config(|c| c.server.websocket.allowed_origins = vec!["https://app.example.com".into()])
        .spawn()
        .await;
    let url = node.url(&format!("?token={}", TestNode::token(1, 2)));
    Client::connect_with(&url, &[("origin", "https://app.example.com")]).await.expect("allowed");
    let (status, body, _) = refused(&url, &[("origin", "https://evil.example.com")]).await;
    assert_eq!((status, body.trim()), (403, "origin not allowed"));
    let (status, _, _) = refused(&url, &[]).await;
    assert_eq!(status, 403, "a missing Origin is refused when a list is configured");
}

#[tokio::test]
async fn at_capacity_the_upgrade_gets_503_with_retry_after() {
    let node = TestNode::builder().config(|c| c.server.websocket.max_connections = 2).spawn().await;
    let _a = node.connect(1, 1).await;
    let mut b = node.connect(2, 1).await;
    let url = node.url(&format!("?token={}", TestNode::token(3, 1)));
    let (status, body, retry) = refused(&url, &[]).await;
    assert_eq!((status, body.trim(), retry.as_deref()), (503, "node at capacity", Some("5")));
    assert_eq!(node.metric(r#"websocket_gateway_handshakes_total{outcome="capacity"}"#).await, 1.0);
    b.ws.close(None).await.expect("close");
    crate::assert_eventually!(node.handle.connections() == 1, "the slot is freed");
    node.connect(3, 1).await;
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_token_expires_unless_configured_off() {
    let short = || sign(json!({"user_id": 3, "biz_id": 9, "exp": now() + 2}), SECRET);
    let node = TestNode::builder().config(|c| c.auth.jwt.leeway = Duration::ZERO).spawn().await;
    let mut c = Client::connect(&node.url(&format!("?token={}", short()))).await.expect("in");
    heartbeat_works(&mut c).await;
    assert_eq!(code(&c.closed().await), (4001, "token expired".to_owned()));
    let closes = r#"websocket_gateway_closes_total{code="4001",reason="token expired"}"#;
    assert_eq!(node.metric(closes).await, 1.0);

    let lenient = TestNode::builder()
        .config(|c| {
            c.auth.jwt.leeway = Duration::ZERO;
            c.auth.jwt.close_on_expiry = false;
        })
        .spawn()
        .await;
    let mut c = Client::connect(&lenient.url(&format!("?token={}", short()))).await.expect("in");
    tokio::time::sleep(Duration::from_secs(3)).await;
    heartbeat_works(&mut c).await;
}

#[tokio::test]
async fn browsers_may_send_the_token_as_a_subprotocol_and_get_wsgw_v1_back() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let node = TestNode::spawn().await;
    let mut req = node.url("").into_client_request().expect("request");
    let offered = format!("wsgw.v1, bearer.{}", TestNode::token(42, 9999));
    req.headers_mut().insert("sec-websocket-protocol", offered.parse().expect("header"));
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("accepted");
    let chosen = resp.headers().get("sec-websocket-protocol").expect("a subprotocol chosen");
    assert_eq!(chosen, "wsgw.v1", "the token is never echoed");
    heartbeat_works(&mut Client { ws }).await;
    // A bad token in the subprotocol is refused like any other.
    let mut bad = node.url("").into_client_request().expect("request");
    let forged = "wsgw.v1, bearer.not-a-jwt".parse().expect("header");
    bad.headers_mut().insert("sec-websocket-protocol", forged);
    match tokio_tungstenite::connect_async(bad).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a connection")),
    }
}
