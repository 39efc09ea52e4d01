//! One simulated client: connects (from a chosen source address), then sends upstream
//! messages at its rate, acknowledges pushes and records what it receives until stopped.

use std::{net::IpAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpSocket, TcpStream},
    time::{Instant, Interval, MissedTickBehavior},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message as WsMessage, http::Uri, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

use super::{Plan, Stats};
use crate::protocol::{CommandType, ErrorCode, ErrorInfo, Message, Serializer};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one client connects, and as whom.
pub(super) struct Target {
    pub url: String,
    pub source: Option<IpAddr>,
    pub token: String,
}

impl Target {
    pub(super) fn new(plan: &Plan, index: usize, token: String) -> Self {
        Self {
            url: plan.urls[index % plan.urls.len()].clone(),
            source: (!plan.sources.is_empty()).then(|| plan.sources[index % plan.sources.len()]),
            token,
        }
    }
}

pub(super) async fn run(
    target: Target,
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let ws = tokio::select! {
        ws = connect(&target) => ws,
        _ = stop.cancelled() => return,
    };
    match ws {
        Ok(ws) => {
            stats.connected(started.elapsed());
            Session::new(ws, &plan, stats).run(&stop).await;
        }
        Err(reason) => stats.connect_failed(reason),
    }
}

/// Opens an authenticated WebSocket to `target`; the error is a short reason.
pub(super) async fn connect(target: &Target) -> Result<WebSocketStream<TcpStream>, String> {
    let sep = if target.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}token={}", target.url, target.token);
    let uri: Uri = url.parse().map_err(|_| "bad url".to_owned())?;
    let host = uri.host().ok_or("url without host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolve: {}", e.kind()))?
        .next()
        .ok_or("resolve: no address")?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(source) = target.source {
        socket.bind((source, 0).into()).map_err(|e| format!("bind {source}: {}", e.kind()))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| "tcp connect timeout".to_owned())?
        .map_err(|e| format!("tcp connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => Err("handshake timeout".into()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(format!("HTTP {}", resp.status().as_u16())),
        Ok(Err(tungstenite::Error::Io(e))) => Err(format!("io: {}", e.kind())),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
    }
}

struct Session {
    ws: WebSocketStream<TcpStream>,
    stats: Arc<Stats>,
    serializer: Serializer,
    body: Bytes,
    ticker: Option<Interval>,
    remaining: Option<u64>,
    seq: u64,
}

impl Session {
    fn new(ws: WebSocketStream<TcpStream>, plan: &Plan, stats: Arc<Stats>) -> Self {
        let ticker = (plan.upstream_rate > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / plan.upstream_rate);
            // Spread the first sends over one period so clients do not tick in lockstep.
            let offset = period.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at(Instant::now() + offset, period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        Self {
            ws,
            stats,
            serializer: plan.serializer,
            body: Bytes::from(vec![b'x'; plan.body_size]),
            ticker,
            remaining: plan.upstream_count,
            seq: 0,
        }
    }

    async fn run(mut self, stop: &CancellationToken) {
        loop {
            let sending = self.ticker.is_some() && self.remaining != Some(0);
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
                    return;
                }
                _ = tick(&mut self.ticker), if sending => {
                    if self.send_upstream().await.is_err() {
                        self.stats.server_closed("send failed".into());
                        return;
                    }
                }
                frame = self.ws.next() => match frame {
                    Some(Ok(WsMessage::Binary(b))) => self.on_message(&b).await,
                    Some(Ok(WsMessage::Close(frame))) => {
                        let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason));
                        self.stats.server_closed(reason.unwrap_or_else(|| "close".into()));
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        self.stats.server_closed("connection lost".into());
                        return;
                    }
                },
            }
        }
    }

    async fn send_upstream(&mut self) -> Result<(), tungstenite::Error> {
        let key = self.stats.key('u', self.seq);
        self.seq += 1;
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        let msg =
            Message { cmd: CommandType::UpstreamMessage.into(), key, body: self.body.clone() };
        self.stats.up_sent.fetch_add(1, Ordering::Relaxed);
        self.ws.send(WsMessage::Binary(self.serializer.encode(&msg))).await
    }

    async fn on_message(&mut self, frame: &[u8]) {
        let Ok(msg) = self.serializer.decode::<Message>(frame) else {
            self.stats.upstream_error("undecodable reply".into());
            return;
        };
        match CommandType::try_from(msg.cmd) {
            Ok(CommandType::UpstreamAck) => self.stats.upstream_acked(&msg.key),
            Ok(CommandType::RateLimitExceeded) => {
                self.stats.up_rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            Ok(CommandType::Error) => {
                let code = self.serializer.decode::<ErrorInfo>(&msg.body).ok().map(|i| i.code);
                let name = code.and_then(|c| ErrorCode::try_from(c).ok()).map(|c| c.as_str_name());
                self.stats.upstream_error(name.unwrap_or("ERROR").to_owned());
            }
            Ok(CommandType::DownstreamMessage) if msg.key.starts_with('b') => {
                self.stats.broadcast_received(&msg.key);
            }
            Ok(CommandType::DownstreamMessage) => {
                self.stats.push_received(&msg.key);
                let ack = Message {
                    cmd: CommandType::DownstreamAck.into(),
                    key: msg.key,
                    body: Bytes::new(),
                };
                let _ = self.ws.send(WsMessage::Binary(self.serializer.encode(&ack))).await;
            }
            _ => {}
        }
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
