//! Any bytes a client sends to the WebSocket port, through a real node in this process: the
//! HTTP upgrade request (tungstenite's parser, then wsgw's origin, token, subprotocol and
//! X-Forwarded-For handling up to the refusal) and, when it upgrades, the frames after it.
//! `@T` in the input becomes a valid token, so the fuzzer reaches the authenticated paths too.
//! A panic on any of the node's tasks aborts the process (the fuzzer sees a crash).
#![no_main]

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    runtime::Runtime,
};
use wsgw::{
    auth::{Identity, TokenSpec, mint},
    config::Config,
    node::Node,
};

const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789abcdef";

struct Target {
    runtime: Runtime,
    addr: SocketAddr,
    token: Vec<u8>,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic: {info}");
            std::process::abort();
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = Config::default();
        config.server.websocket.listen = Some("127.0.0.1:0".parse().expect("addr"));
        config.server.websocket.handshake_timeout = Duration::from_millis(200);
        config.server.websocket.trusted_proxies = vec!["127.0.0.1/32".into()];
        config.server.governor.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.grpc.listen = "127.0.0.1:0".parse().expect("addr");
        config.auth.jwt.secret = SECRET.into();
        let addr = runtime.block_on(async {
            let node = Node::bind(config).await.expect("node");
            let addr = node.ws_addr();
            tokio::spawn(node.run(std::future::pending()));
            addr
        });
        let spec = TokenSpec::hs256(Identity { biz_id: 9, user_id: 1 }, Duration::from_secs(3600));
        let token = mint(&spec, SECRET.as_bytes()).expect("token").into_bytes();
        Target { runtime, addr, token }
    })
}

/// `data` with every `@T` replaced by the valid token.
fn with_token(data: &[u8], token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == b"@T") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(token);
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    let input = with_token(data, &t.token);
    t.runtime.block_on(async {
        let Ok(mut stream) = TcpStream::connect(t.addr).await else { return };
        let _ = stream.write_all(&input).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    });
});
