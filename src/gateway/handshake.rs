//! The WebSocket upgrade: origin check, capacity, token extraction and JWT verification, all
//! decided before the `101 Switching Protocols` is sent. Refusals are plain HTTP answers with a
//! one-line reason (401 bad token, 403 origin, 503 + Retry-After at capacity or while draining).

use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::handshake::server::{ErrorResponse, Request, Response},
    tungstenite::http::{HeaderValue, StatusCode, header},
};

use std::net::SocketAddr;

use super::{Gateway, Stream, client_ip::client_addr};
use crate::auth::{AuthError, Identity};
use crate::links::Slot;

/// A client that passed the handshake.
pub(super) struct Accepted {
    pub identity: Identity,
    /// The client's address (through trusted proxies).
    pub client: SocketAddr,
    /// The token's `exp` (Unix seconds), when it has one.
    pub expires: Option<u64>,
    /// The client sent `X-AutoClose: true`: close it when idle.
    pub auto_close: bool,
    pub slot: Slot,
}

/// Performs the handshake within `server.websocket.handshake_timeout`. On refusal returns the
/// handshake-outcome label (the client has already been answered when it could be).
pub(super) async fn accept<S: Stream>(
    stream: S,
    peer: SocketAddr,
    gw: &Gateway,
) -> Result<(WebSocketStream<S>, Accepted), &'static str> {
    let mut decision: Option<Result<Accepted, &'static str>> = None;
    // The callback's error type is tungstenite's (a full HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| match check(req, peer, gw) {
        Ok(accepted) => {
            decision = Some(Ok(accepted));
            if offers(req).any(|p| p == SUBPROTOCOL) {
                resp.headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
            }
            Ok(resp)
        }
        Err(refusal) => {
            decision = Some(Err(refusal.outcome));
            Err(refusal.response())
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(gw.ws_config));
    let result =
        tokio::time::timeout(gw.config.server.websocket.handshake_timeout, handshake).await;
    match (result, decision) {
        (Ok(Ok(ws)), Some(Ok(accepted))) => Ok((ws, accepted)),
        (Err(_elapsed), _) => Err("timeout"),
        (_, Some(Err(outcome))) => Err(outcome),
        _ => Err("bad_request"),
    }
}

/// Why an upgrade is refused: the metric outcome and the HTTP answer.
struct Refusal {
    outcome: &'static str,
    status: StatusCode,
    reason: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(outcome: &'static str, status: StatusCode, reason: impl Into<String>) -> Self {
        Self { outcome, status, reason: reason.into(), retry_after: None }
    }

    fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs().max(1));
        self
    }

    /// A plain-text answer with the one-line reason.
    fn response(self) -> ErrorResponse {
        let body = format!("{}\n", self.reason);
        let mut resp = ErrorResponse::new(None);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        *resp.body_mut() = Some(body);
        resp
    }
}

fn check(req: &Request, peer: SocketAddr, gw: &Gateway) -> Result<Accepted, Refusal> {
    let ws = &gw.config.server.websocket;
    if !ws.allowed_origins.is_empty() {
        let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o))) {
            let forbidden = StatusCode::FORBIDDEN;
            return Err(Refusal::new("forbidden_origin", forbidden, "origin not allowed"));
        }
    }
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    if gw.drain.is_cancelled() {
        let refusal = Refusal::new("draining", unavailable, "node is draining");
        return Err(refusal.retry_after(ws.retry_after));
    }
    let Some(slot) = gw.links.admit() else {
        let refusal = Refusal::new("capacity", unavailable, "node at capacity");
        return Err(refusal.retry_after(ws.retry_after));
    };
    let auto_close = req
        .headers()
        .get("x-autoclose")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    // Read only when some proxy is trusted to set it (otherwise anyone could).
    let forwarded = match gw.trusted_proxies.is_empty() {
        true => None,
        false => req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
    };
    let client = client_addr(peer, forwarded, &gw.trusted_proxies);
    if ws.conformance_echo {
        let identity = Identity { biz_id: 0, user_id: 0 };
        return Ok(Accepted { identity, client, expires: None, auto_close, slot });
    }
    if let Some(rates) = &gw.address_rates
        && !rates.admit(client.ip(), tokio::time::Instant::now())
    {
        let refusal = "too many handshakes from this address";
        let refusal = Refusal::new("address_rate", StatusCode::TOO_MANY_REQUESTS, refusal);
        return Err(refusal.retry_after(ws.retry_after));
    }
    let per_ip = gw.config.limits.max_connections_per_ip;
    if per_ip > 0 && gw.links.address_connections(&client.ip()) >= per_ip {
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        let refusal = "too many connections from this address";
        return Err(Refusal::new("address_limit", too_many, refusal));
    }
    let verified = token(req)
        .ok_or(AuthError::Missing)
        .and_then(|t| gw.verifier.verify_token(&t))
        .map_err(|e| Refusal::new(e.outcome(), StatusCode::UNAUTHORIZED, e.to_string()))?;
    let (identity, expires) = (verified.identity, verified.expires);
    let per_user = gw.config.limits.max_connections_per_user;
    if per_user > 0 && gw.links.user_connections(&identity) >= per_user {
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        return Err(Refusal::new("user_limit", too_many, "too many connections for this user"));
    }
    Ok(Accepted { identity, client, expires, auto_close, slot })
}

/// The subprotocol a browser offers next to its token, and the one the node answers with (a
/// browser fails a handshake that offered subprotocols and got none back). The token itself is
/// never echoed.
pub const SUBPROTOCOL: &str = "wsgw.v1";

/// The prefix of the subprotocol that carries the token: `bearer.<jwt>` (JWTs are valid
/// subprotocol tokens), so browsers keep tokens out of URLs and proxy logs:
/// `new WebSocket(url, ["wsgw.v1", "bearer." + jwt])`.
pub const TOKEN_SUBPROTOCOL: &str = "bearer.";

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, comma-separated).
fn offers(req: &Request) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token from the `token` query parameter, else from `Authorization: Bearer …`, else from
/// a `bearer.<jwt>` subprotocol.
fn token(req: &Request) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    from_query
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            let auth = req.headers().get(header::AUTHORIZATION)?;
            auth.to_str().ok().map(str::to_owned)
        })
        .or_else(|| offers(req).find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL)).map(str::to_owned))
}
