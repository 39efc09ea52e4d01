//! The task that owns one client connection: the socket's only reader, and its writer (on a
//! plain connection a publisher may also write a whole frame while the connection is idle:
//! `links/gate.rs`).
//!
//! One loop selects over: the node draining, the link's outbound queue, the next frame, and one
//! timer for ping / pong / idle deadlines (re-armed only when it fires, never per frame).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt, future::Either};
use tokio::{
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, sleep_until, timeout},
};
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Error as WsError, Message as WsMessage, error::ProtocolError},
};
use tracing::debug;

use super::{
    CloseReason, Gateway, Link, Stream,
    dispatch::{Reply, dispatch},
    handshake,
    liveness::{Liveness, Tick, expiry_instant},
    metered::Metered,
    rate::{RateLimit, Verdict},
};
use crate::{
    links::{Gate, GateStream, Slot},
    protocol::{CommandType, Message},
    telemetry::{BizMetrics, Direction},
    wire::command,
};

/// Serves one accepted TCP connection from handshake (TLS first, when configured) to close.
/// `handshake` is the connection's place among the handshakes in progress, freed once upgraded.
///
/// Two futures one after the other, not one inside the other: the byte stream's preparation
/// (PROXY header, TLS), then the session. An idle connection's task keeps only the session's
/// state; an `async fn` awaiting the session would also keep its own arguments and locals
/// (about 250 bytes) beside it for the connection's whole life.
pub(super) fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    gw: Arc<Gateway>,
    handshake: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    prepare(stream, remote, gw).then(move |prepared| match prepared {
        Some((Prepared::Plain(stream), remote, gw)) => {
            Either::Left(Either::Left(serve_stream(stream, remote, gw, handshake)))
        }
        // Boxed: a TLS stream is large, and inline it would make every plain connection's task
        // as large as a TLS one's (a future is as big as its largest state).
        Some((Prepared::Tls(stream), remote, gw)) => {
            Either::Left(Either::Right(Box::pin(serve_stream(*stream, remote, gw, handshake))))
        }
        None => Either::Right(std::future::ready(())),
    })
}

/// A client's byte stream, ready for the WebSocket upgrade.
enum Prepared {
    Plain(Metered<GateStream>),
    Tls(Box<TlsStream<Metered<TcpStream>>>),
}

/// Reads the PROXY header (from trusted proxies, when enabled) and does the TLS handshake
/// (when configured), within `handshake_timeout` each. `None`: refused (counted).
async fn prepare(
    mut stream: TcpStream,
    remote: SocketAddr,
    gw: Arc<Gateway>,
) -> Option<(Prepared, SocketAddr, Arc<Gateway>)> {
    let _ = stream.set_nodelay(true);
    let within = gw.config.server.websocket.handshake_timeout;
    let proxied = gw.config.server.websocket.proxy_protocol
        && gw.trusted_proxies.iter().any(|n| n.contains(&remote.ip()));
    let remote = match proxied {
        false => remote,
        true => match timeout(within, super::proxy::read_header(&mut stream, remote)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                gw.metrics.handshake("bad_proxy_header");
                debug!(%remote, error = %e, "PROXY header refused");
                return None;
            }
            Err(_) => {
                gw.metrics.handshake("timeout");
                return None;
            }
        },
    };
    // Paced from the first byte after the PROXY header: TLS and the upgrade count too.
    let Some(tls) = &gw.tls else {
        let plain = Metered::new(GateStream(Gate::new(stream)), gw.read_rate.clone());
        return Some((Prepared::Plain(plain), remote, gw));
    };
    let stream = Metered::new(stream, gw.read_rate.clone());
    // Boxed: the TLS handshake's state is large.
    match timeout(within, Box::pin(tls.acceptor().accept(stream))).await {
        Ok(Ok(secured)) => Some((Prepared::Tls(Box::new(secured)), remote, gw)),
        Ok(Err(e)) => {
            gw.metrics.handshake("tls_failed");
            debug!(%remote, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            gw.metrics.handshake("timeout");
            None
        }
    }
}

/// Serves one client byte stream from the WebSocket upgrade to close: the upgrade, then the
/// session, chained like [`serve`]'s two parts so the session keeps nothing of the upgrade.
fn serve_stream<S: Stream>(
    stream: S,
    remote: SocketAddr,
    gw: Arc<Gateway>,
    handshake: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    // Boxed: the handshake's state is large and only needed until the upgrade.
    Box::pin(upgrade(stream, remote, gw, handshake)).then(|upgraded| match upgraded {
        // Registered outside the session's future: what it takes would otherwise stay in every
        // idle connection's task (a local copied before an await keeps its room to the end).
        Some((ws, accepted, gw)) => Either::Left(session(Connection::open(ws, accepted, gw))),
        None => Either::Right(std::future::ready(())),
    })
}

/// The WebSocket upgrade, holding the connection's place among the handshakes in progress
/// until it is done. `None`: refused (counted; the client was answered when it could be).
async fn upgrade<S: Stream>(
    stream: S,
    remote: SocketAddr,
    gw: Arc<Gateway>,
    _handshake: OwnedSemaphorePermit,
) -> Option<(WebSocketStream<S>, handshake::Accepted, Arc<Gateway>)> {
    match handshake::accept(stream, remote, &gw).await {
        Ok((ws, accepted)) => Some((ws, accepted, gw)),
        Err(outcome) => {
            gw.metrics.handshake(outcome);
            debug!(%remote, outcome, "handshake refused");
            None
        }
    }
}

/// An upgraded client's session to close. Not an `async fn`: its arguments would be kept twice
/// (an `async fn` moves them into locals and keeps both), ~400 bytes per idle connection.
#[allow(clippy::manual_async_fn)]
fn session<S: Stream>(
    (mut conn, slot, deadlines): (Connection<S>, Slot, Deadlines),
) -> impl Future<Output = ()> + Send {
    async move {
        let reason = conn.serve(deadlines).await;
        // From here on nothing is written beside the goodbye (no direct write after a close).
        conn.link.close(reason);
        Box::pin(conn.goodbye(reason)).await;
        conn.closed(reason);
        drop(slot);
    }
}

struct Connection<S> {
    ws: WebSocketStream<S>,
    link: Arc<Link>,
    gw: Arc<Gateway>,
    biz: Arc<BizMetrics>,
    rate: RateLimit,
}

/// When an open connection's idle and expiry rules apply.
struct Deadlines {
    idle: bool,
    expires: Option<Instant>,
}

impl<S: Stream> Connection<S> {
    /// Registers an upgraded client (link, directory, hooks, metrics) and returns its
    /// connection, its upgrade slot and its deadlines.
    fn open(
        ws: WebSocketStream<S>,
        accepted: handshake::Accepted,
        gw: Arc<Gateway>,
    ) -> (Self, Slot, Deadlines) {
        gw.metrics.handshake("ok");
        // Taken apart at once: only the slot lives as long as the connection.
        let handshake::Accepted { identity, client, expires, auto_close, slot } = accepted;
        let limit = gw.config.limits.outbound_queue_bytes.as_u64() as usize;
        let gate = ws.get_ref().gate();
        let (link, first) = gw.links.insert_gated(identity, client, limit, gate);
        let biz = gw.metrics.biz(identity.biz_id);
        if first {
            biz.online_users.inc();
        }
        biz.online_connections.inc();
        gw.directory.connected(&link, first);
        if let Some(hooks) = &gw.hooks {
            hooks.connected(&link);
        }
        gw.metrics.connections_open.inc();
        debug!(conn = link.id, biz = identity.biz_id, user = identity.user_id, %client, "connected");

        let idle = gw.idle_applies(auto_close);
        let expires = expires.filter(|_| gw.config.auth.jwt.close_on_expiry);
        let expires = expires.map(|exp| expiry_instant(exp, gw.config.auth.jwt.leeway));
        let burst = gw.config.limits.message_burst as f32;
        let rate = RateLimit::new(burst, Instant::now());
        let conn = Connection { ws, link, gw, biz, rate };
        (conn, slot, Deadlines { idle, expires })
    }

    /// Unregisters the connection once it has said goodbye.
    fn closed(&self, reason: CloseReason) {
        let (gw, link, biz) = (&*self.gw, &self.link, &self.biz);
        gw.metrics.connections_open.dec();
        let last = gw.links.remove(link);
        if last {
            biz.online_users.dec();
        }
        biz.online_connections.dec();
        gw.directory.disconnected(link, last);
        let code = reason.code().unwrap_or(1006);
        if let Some(hooks) = &gw.hooks {
            hooks.disconnected(link, code, reason.as_str());
        }
        gw.metrics.closed(code, reason.as_str());
        debug!(conn = link.id, reason = reason.as_str(), "closed");
    }

    /// Runs until the connection must end, and says why.
    async fn serve(&mut self, deadlines: Deadlines) -> CloseReason {
        let Deadlines { idle, expires } = deadlines;
        let gw = self.gw.clone();
        let link = self.link.clone();
        let mut clock = Liveness::new(Instant::now(), &gw.config.limits, idle);
        clock.expires = expires;
        let timer = sleep_until(clock.deadline());
        // The waits live across iterations: re-registering them on every wake-up costs locks
        // (the drain token is gw by every connection) on the fan-out path.
        let drain = gw.drain.cancelled();
        let woken = link.woken();
        tokio::pin!(timer, drain, woken);
        loop {
            tokio::select! {
                biased;
                _ = &mut drain => return CloseReason::GoingAway,
                _ = &mut woken => {
                    woken.set(link.woken());
                    // Boxed (like every write below): an idle connection's future then only
                    // holds what waiting needs, not the state of a write in progress.
                    if let Err(reason) = Box::pin(self.flush()).await {
                        return reason;
                    }
                }
                frame = self.ws.next() => {
                    let now = Instant::now();
                    clock.heard(now);
                    let data = match frame {
                        None => return CloseReason::ClientClosed,
                        Some(Err(e)) => return reason_for(&e),
                        Some(Ok(WsMessage::Text(t))) => (Bytes::from(t), true),
                        Some(Ok(WsMessage::Binary(b))) => (b, false),
                        // Pings are answered by tungstenite, and count against the message
                        // rate (a ping flood is closed like any other); pongs only prove
                        // liveness (above); a close is replied to and ends the stream.
                        Some(Ok(WsMessage::Ping(_))) => {
                            if self.within_rate() == Verdict::Close {
                                return CloseReason::RateLimited;
                            }
                            continue;
                        }
                        Some(Ok(_)) => continue,
                    };
                    clock.application_message(now);
                    if let Err(reason) = self.on_data(data.0, data.1) {
                        return reason;
                    }
                }
                _ = &mut timer => {
                    match clock.on_timer(Instant::now()) {
                        Tick::Ping => {
                            let ping = WsMessage::Ping(Bytes::new());
                            if let Err(reason) = Box::pin(self.write(ping)).await {
                                return reason;
                            }
                        }
                        Tick::Close(reason) => return reason,
                        Tick::Wait => {}
                    }
                    timer.as_mut().reset(clock.deadline());
                }
            }
        }
    }

    /// Handles one data message from the client; replies go to the outbound queue.
    fn on_data(&mut self, data: Bytes, text: bool) -> Result<(), CloseReason> {
        if self.gw.config.server.websocket.conformance_echo {
            let echo = if text {
                WsMessage::Text(data.try_into().map_err(|_| CloseReason::InvalidMessage)?)
            } else {
                WsMessage::Binary(data)
            };
            return self.queue(echo);
        }
        self.biz.message(Direction::In, data.len());
        self.link.received();
        let verdict = self.within_rate();
        let gw = &*self.gw;
        if verdict == Verdict::Close {
            return Err(CloseReason::RateLimited);
        }
        let msg: Message = gw.wire.serializer.decode(&data).map_err(|e| {
            gw.metrics.decode_errors.inc();
            debug!(conn = self.link.id, error = %e, "undecodable message");
            CloseReason::InvalidMessage
        })?;
        gw.metrics.command(Direction::In, command(msg.cmd));
        if verdict == Verdict::Refuse {
            gw.metrics.rate_limited.inc();
            let cmd = CommandType::RateLimitExceeded.into();
            let limited = Message { cmd, key: msg.key, body: Bytes::new() };
            return gw.wire.send(&self.link, &limited).map_err(|_| CloseReason::SlowConsumer);
        }
        match dispatch(msg, &gw.wire, gw.config.limits.max_key_length) {
            Reply::Send(reply) => {
                gw.wire.send(&self.link, &reply).map_err(|_| CloseReason::SlowConsumer)
            }
            Reply::Upstream { key, body } => {
                gw.upstream.submit(&self.link, key, body);
                Ok(())
            }
            Reply::Acked(key) => {
                gw.downstream.acked(self.link.identity, key);
                Ok(())
            }
            Reply::Nothing => Ok(()),
        }
    }

    /// This message against `limits.message_rate` (always passes when it is 0).
    fn within_rate(&mut self) -> Verdict {
        let limits = &self.gw.config.limits;
        if limits.message_rate <= 0.0 {
            return Verdict::Pass;
        }
        let burst = limits.message_burst as f32;
        self.rate.check(Instant::now(), limits.message_rate, burst)
    }

    fn queue(&self, msg: WsMessage) -> Result<(), CloseReason> {
        self.link.send(msg).map_err(|_| {
            self.gw.metrics.outbound_dropped.inc();
            CloseReason::SlowConsumer
        })
    }

    /// Writes everything queued on the link in one flush.
    async fn flush(&mut self) -> Result<(), CloseReason> {
        let batch = self.link.take()?;
        if batch.is_empty() {
            // Woken for the end of a frame a publisher wrote in part: flushing writes it.
            if self.link.has_partial() {
                within(self.gw.config.limits.write_timeout, self.ws.flush()).await?;
            }
            return Ok(());
        }
        let bytes: usize = batch.iter().map(WsMessage::len).sum();
        let ws = &mut self.ws;
        let write = async move {
            for msg in batch {
                ws.feed(msg).await?;
            }
            ws.flush().await
        };
        within(self.gw.config.limits.write_timeout, write).await?;
        self.link.written(bytes);
        Ok(())
    }

    async fn write(&mut self, msg: WsMessage) -> Result<(), CloseReason> {
        within(self.gw.config.limits.write_timeout, self.ws.send(msg)).await
    }

    /// Sends the close frame for `reason` (if any) and waits briefly for the client's answer.
    async fn goodbye(&mut self, reason: CloseReason) {
        let Some(mut frame) = reason.frame() else { return };
        match reason {
            CloseReason::SlowConsumer => self.gw.metrics.outbound_dropped.inc(),
            CloseReason::Kicked => {
                // Close reasons are at most 123 bytes; cut on a character boundary.
                let mut text = self.link.close_text().unwrap_or_else(|| "kicked".into());
                while text.len() > 123 {
                    text.pop();
                }
                frame.reason = text.into();
            }
            // What was queued before (a REDIRECT) goes out before the close.
            CloseReason::GoingAway | CloseReason::Redirected => {
                let rest = self.link.take_rest();
                let ws = &mut self.ws;
                let write = async move {
                    for msg in rest {
                        ws.feed(msg).await?;
                    }
                    ws.flush().await
                };
                let _ = within(self.gw.config.limits.write_timeout, write).await;
            }
            _ => {}
        }
        let limits = &self.gw.config.limits;
        let abort = &self.gw.abort;
        let ws = &mut self.ws;
        let close = async {
            if timeout(limits.write_timeout, ws.close(Some(frame))).await.is_err() {
                return;
            }
            // Read until the client's close (or EOF); tungstenite completes the handshake.
            let _ =
                timeout(limits.pong_timeout, async { while let Some(Ok(_)) = ws.next().await {} })
                    .await;
        };
        tokio::select! {
            _ = close => {}
            _ = abort.cancelled() => {}
        }
    }
}

/// Runs a write with the write timeout; a write that cannot finish marks a slow consumer.
async fn within(
    limit: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), CloseReason> {
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(reason_for(&e)),
        Err(_elapsed) => Err(CloseReason::SlowConsumer),
    }
}

fn reason_for(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(_) => CloseReason::MessageTooBig,
        WsError::Utf8(_) => CloseReason::InvalidMessage,
        WsError::WriteBufferFull(_) => CloseReason::SlowConsumer,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            CloseReason::ConnectionLost
        }
        WsError::Protocol(_) => CloseReason::ProtocolError,
        _ => CloseReason::ConnectionLost,
    }
}
