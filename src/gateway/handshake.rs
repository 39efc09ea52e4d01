//! The WebSocket upgrade: origin check, capacity, token extraction and JWT verification, all
//! decided before the `101 Switching Protocols` is sent. Refusals are plain HTTP answers with a
//! one-line reason (401 bad token, 403 origin, 503 + Retry-After at capacity or while draining).

use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::handshake::server::{ErrorResponse, Request, Response},
    tungstenite::http::{HeaderValue, StatusCode, header},
};

use super::{Shared, links::Slot};
use crate::auth::{AuthError, Identity};

/// A client that passed the handshake.
pub(super) struct Accepted<'a> {
    pub identity: Identity,
    /// The client sent `X-AutoClose: true`: close it when idle.
    pub auto_close: bool,
    pub slot: Slot<'a>,
}

/// Performs the handshake within `server.websocket.handshake_timeout`. On refusal returns the
/// handshake-outcome label (the client has already been answered when it could be).
pub(super) async fn accept<'a>(
    stream: TcpStream,
    shared: &'a Shared,
) -> Result<(WebSocketStream<TcpStream>, Accepted<'a>), &'static str> {
    let mut decision: Option<Result<Accepted<'a>, &'static str>> = None;
    let callback = |req: &Request, resp: Response| match check(req, shared) {
        Ok(accepted) => {
            decision = Some(Ok(accepted));
            Ok(resp)
        }
        Err((outcome, refusal)) => {
            decision = Some(Err(outcome));
            Err(refusal)
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws_config));
    let result =
        tokio::time::timeout(shared.config.server.websocket.handshake_timeout, handshake).await;
    match (result, decision) {
        (Ok(Ok(ws)), Some(Ok(accepted))) => Ok((ws, accepted)),
        (Err(_elapsed), _) => Err("timeout"),
        (_, Some(Err(outcome))) => Err(outcome),
        _ => Err("bad_request"),
    }
}

type Refusal = (&'static str, ErrorResponse);

fn check<'a>(req: &Request, shared: &'a Shared) -> Result<Accepted<'a>, Refusal> {
    let ws = &shared.config.server.websocket;
    if !ws.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o))) {
            return Err((
                "forbidden_origin",
                refuse(StatusCode::FORBIDDEN, "origin not allowed", None),
            ));
        }
    }
    if shared.drain.is_cancelled() {
        let retry = ws.retry_after.as_secs().max(1);
        return Err((
            "draining",
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "node is draining",
                Some(retry),
            ),
        ));
    }
    let Some(slot) = shared.links.admit() else {
        let retry = ws.retry_after.as_secs().max(1);
        return Err((
            "capacity",
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "node at capacity",
                Some(retry),
            ),
        ));
    };
    let auto_close = req
        .headers()
        .get("x-autoclose")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if ws.conformance_echo {
        return Ok(Accepted {
            identity: Identity {
                biz_id: 0,
                user_id: 0,
            },
            auto_close,
            slot,
        });
    }
    let identity = token(req)
        .ok_or(AuthError::Missing)
        .and_then(|t| shared.verifier.verify(&t))
        .map_err(|e| {
            (
                e.outcome(),
                refuse(StatusCode::UNAUTHORIZED, &e.to_string(), None),
            )
        })?;
    Ok(Accepted {
        identity,
        auto_close,
        slot,
    })
}

/// The token from the `token` query parameter, else from `Authorization: Bearer …`.
fn token(req: &Request) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    from_query.filter(|t| !t.trim().is_empty()).or_else(|| {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

fn refuse(status: StatusCode, reason: &str, retry_after: Option<u64>) -> ErrorResponse {
    let body = format!("{reason}\n");
    let mut resp = ErrorResponse::new(None);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    *resp.body_mut() = Some(body);
    resp
}
