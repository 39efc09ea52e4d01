//! A WebSocket client for tests, speaking the gateway's protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message as WsMessage, client::IntoClientRequest, protocol::CloseFrame},
};
use wsgw::protocol::{Message, Serializer};

const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client, tungstenite::Error> {
        Self::connect_with(url, &[]).await
    }

    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            let name: tungstenite::http::HeaderName = k.parse().expect("header name");
            req.headers_mut().insert(name, v.parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client { ws })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.expect("send");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(WsMessage::binary(data)).await.expect("send");
    }

    pub async fn send(&mut self, msg: &Message, serializer: Serializer) {
        self.send_binary(serializer.encode(msg).to_vec()).await;
    }

    /// The next data frame (binary or text), skipping pings and pongs.
    pub async fn recv(&mut self) -> WsMessage {
        loop {
            let next =
                tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await.expect("a frame in time");
            match next.expect("stream open").expect("frame") {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next message, decoded; the gateway always sends binary frames.
    pub async fn recv_msg(&mut self, serializer: Serializer) -> Message {
        match self.recv().await {
            WsMessage::Binary(b) => serializer.decode(&b).expect("decodable message"),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next message within `wait` (None: nothing came), skipping pings and pongs.
    pub async fn recv_msg_within(
        &mut self,
        serializer: Serializer,
        wait: Duration,
    ) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match next.expect("frame") {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                WsMessage::Binary(b) => {
                    return Some(serializer.decode(&b).expect("decodable message"));
                }
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Acknowledges a push (DOWNSTREAM_ACK with its key).
    pub async fn ack(&mut self, key: &str, serializer: Serializer) {
        let cmd = wsgw::protocol::CommandType::DownstreamAck.into();
        self.send(&Message { cmd, key: key.into(), body: Default::default() }, serializer).await;
    }

    /// Reads until the server's close frame, completes the closing handshake like a polite
    /// client, and returns the frame (None: closed without a frame).
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        let frame = loop {
            let next =
                tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await.expect("close in time");
            match next {
                Some(Ok(WsMessage::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        };
        // Reading on sends tungstenite's close reply; the stream then ends.
        let _ = tokio::time::timeout(RECV_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        frame
    }

    /// Keeps reading (and so answering pings) for `period`, failing on any data or close.
    pub async fn listen_for(&mut self, period: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match next {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected only pings, got {other:?}"),
            }
        }
    }
}

/// The close code and reason of a close frame.
pub fn code(frame: &Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (1006, String::new()),
    }
}
