//! The floor for the upstream path: the least a Rust server built on the same crates must do to
//! turn a client's UPSTREAM_MESSAGE into an `OnReceive` call and the answer into an
//! UPSTREAM_ACK — tokio-tungstenite, the JSON serializer and a tonic client over one channel,
//! one task per connection with its calls in flight polled by that task (no task per message).
//! No authentication (the handshake is not measured), no dedup, limits, retries, metrics or
//! sender headers: what wsgw costs above this is the price of its features and its structure.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt, stream::FuturesUnordered};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Message as WsMessage, protocol::WebSocketConfig};
use tonic::transport::{Channel, Endpoint};
use wsgw::protocol::{
    CommandType, Message, Serializer,
    pb::{OnReceiveRequest, backend_service_client::BackendServiceClient},
};

pub const ABOUT: &str = "tokio-tungstenite + one tonic OnReceive call per message + ACK, \
one task per connection (benches/upstream/floor.rs)";

/// Serves WebSocket clients on `listen`, calling the backend at `backend`, until killed.
pub fn serve(listen: &str, backend: &str) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let listen: SocketAddr = listen.parse().expect("listen address");
        let channel = Endpoint::from_shared(format!("http://{backend}"))
            .expect("backend address")
            .tcp_nodelay(true)
            .connect_lazy();
        let listener = TcpListener::bind(listen).await.expect("bind the floor's listener");
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(connection(tcp, BackendServiceClient::new(channel.clone())));
        }
    });
}

async fn connection(tcp: TcpStream, client: BackendServiceClient<Channel>) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    let json = Serializer::Json;
    let mut calls = FuturesUnordered::new();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Binary(frame))) => {
                    let Ok(msg) = json.decode::<Message>(&frame) else { continue };
                    if msg.cmd != CommandType::UpstreamMessage as i32 {
                        continue;
                    }
                    let mut client = client.clone();
                    calls.push(async move {
                        let request = OnReceiveRequest { key: msg.key.clone(), body: msg.body };
                        (msg.key, client.on_receive(request).await)
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            Some((key, answer)) = calls.next(), if !calls.is_empty() => {
                let Ok(answer) = answer else { continue };
                let body = json.encode(&answer.into_inner());
                let ack = Message { cmd: CommandType::UpstreamAck as i32, key, body };
                if ws.send(WsMessage::Binary(json.encode(&ack))).await.is_err() {
                    return;
                }
            }
        }
    }
}
