//! `wsgw push`: push a message to every connection of a user through a node's gRPC
//! `PushService`, or (`--all`) broadcast it to every connection of a business.
//!
//! In cluster mode any node routes the push to every node holding the user, or keeps it in the
//! user's offline inbox. Broadcasts reach the connections of the addressed node.
//!
//! Exit codes: 0 delivered, or stored for an offline user (cluster mode); 1 not delivered (no
//! connection, single node; or a broadcast reached nobody); 2 refused or failed (bad arguments,
//! wrong token, node unreachable, overloaded).

use crate::{exit, secrets};
use std::{io::Read as _, path::PathBuf, process::ExitCode, time::Duration};

use crate::nodes::TargetArgs;
use anyhow::{Context as _, bail};
use tonic::{Code, Request};
use wsgw::grpc::{Bearer, GrpcAddr, GrpcError};
use wsgw::protocol::pb::{
    BroadcastRequest, PushMessage, PushRequest, push_service_client::PushServiceClient,
};

/// Push a message to every connection of a user (cluster-wide in cluster mode), or broadcast it.
#[derive(clap::Args)]
pub struct Args {
    /// Receiver's user id.
    #[arg(long, required_unless_present = "all")]
    user: Option<i64>,
    /// Broadcast to every connection of --biz (every connection of the node with --biz 0);
    /// encoded once, not retransmitted.
    #[arg(long, conflicts_with = "user")]
    all: bool,
    /// Receiver's business id.
    #[arg(long)]
    biz: i64,
    /// Message key (the client acknowledges it); a random one by default.
    #[arg(long)]
    key: Option<String>,
    /// The node (--addr), or the registry (--etcd): the push then goes through the
    /// least-loaded node and reaches the user wherever they are; --all broadcasts on every node.
    #[command(flatten)]
    to: TargetArgs,
    /// The backend token (server.grpc.tokens.backend; else WSGW_SERVER__GRPC__TOKEN).
    #[arg(long, env = "WSGW_SERVER__GRPC__TOKENS__BACKEND", hide_env_values = true)]
    token: Option<String>,
    /// Read the backend token from this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Read the body from this file.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The body; `-` reads standard input.
    text: Option<String>,
}

pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let body = body(&args)?;
    args.token = Some(secrets::token(args.token.as_deref(), args.token_file.as_ref())?);
    let key = args.key.clone().unwrap_or_else(random_key);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let user = args.user.unwrap_or(0);
    let msg =
        PushMessage { key: key.clone(), biz_id: args.biz, receiver_id: user, body: body.into() };
    let result = runtime.block_on(async {
        tokio::time::timeout(args.timeout, async {
            let addrs = addresses(&args).await?;
            let mut total = (0, false);
            for addr in &addrs {
                let (n, stored) = push(&args, addr, msg.clone()).await?;
                total = (total.0 + n, total.1 || stored);
            }
            Ok(total)
        })
        .await
    });
    let who = match args.all {
        true => format!("biz {} (broadcast)", args.biz),
        false => format!("user {user} of biz {}", args.biz),
    };
    match result {
        Err(_) => {
            eprintln!("error: no answer within {:?}", args.timeout);
            Ok(exit::failed())
        }
        Ok(Ok((0, true))) => {
            println!(
                "stored in the offline inbox of {who}, key {key}: delivered when they connect"
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok((0, false))) => {
            eprintln!("not delivered: no connection of {who}");
            Ok(exit::no())
        }
        Ok(Ok((n, stored))) => {
            let also = if stored { " (and kept for a device on an unreachable node)" } else { "" };
            println!("delivered to {n} connection(s) of {who}, key {key}{also}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(PushFailure::Status(s))) if s.code() == Code::NotFound => {
            eprintln!("not delivered: {}", s.message());
            Ok(exit::no())
        }
        Ok(Err(PushFailure::Status(s))) => {
            eprintln!("error: push refused ({:?}): {}", s.code(), s.message());
            Ok(exit::failed())
        }
        Ok(Err(PushFailure::Connect(e))) => {
            eprintln!("error: cannot reach the node: {e}");
            Ok(exit::failed())
        }
        Ok(Err(PushFailure::Registry(e))) => {
            eprintln!("error: node registry (etcd): {e}");
            Ok(exit::failed())
        }
        Ok(Err(PushFailure::Grpc(e))) => {
            eprintln!("error: {e}");
            Ok(exit::failed())
        }
    }
}

enum PushFailure {
    Connect(tonic::transport::Error),
    Status(tonic::Status),
    Registry(String),
    Grpc(GrpcError),
}

/// The node(s) to call: `--addr`, or from etcd the least-loaded node (every node for --all).
async fn addresses(args: &Args) -> Result<Vec<String>, PushFailure> {
    let to = &args.to;
    if !to.whole_cluster() {
        return Ok(vec![to.addr.clone()]);
    }
    let etcd = to.etcd_access().map_err(|e| PushFailure::Registry(format!("{e:#}")))?;
    let nodes = wsgw::admin::client::registered(&etcd, &to.etcd_prefix)
        .await
        .map_err(|e| PushFailure::Registry(e.to_string()))?;
    let mut addrs: Vec<String> =
        nodes.iter().filter_map(|n| n.grpc_addr().map(str::to_owned)).collect();
    if !args.all {
        addrs.truncate(1);
    }
    if addrs.is_empty() {
        return Err(PushFailure::Registry("no node is registered".into()));
    }
    Ok(addrs)
}

/// (connections reached, kept in the offline inbox).
async fn push(args: &Args, addr: &str, msg: PushMessage) -> Result<(i64, bool), PushFailure> {
    let tls = args.to.tls().map_err(|e| PushFailure::Registry(format!("{e:#}")))?;
    let endpoint =
        GrpcAddr::parse(addr).and_then(|a| a.endpoint(&tls)).map_err(PushFailure::Grpc)?;
    let channel = endpoint.connect().await.map_err(PushFailure::Connect)?;
    let mut client = PushServiceClient::new(channel);
    if args.all {
        let broadcast = BroadcastRequest { biz_id: msg.biz_id, key: msg.key, body: msg.body };
        let response =
            client.broadcast(authorized(broadcast, args)?).await.map_err(PushFailure::Status)?;
        return Ok((response.into_inner().connections, false));
    }
    let request = authorized(PushRequest { msg: Some(msg) }, args)?;
    let response = client.push(request).await.map_err(PushFailure::Status)?.into_inner();
    Ok((response.connections.into(), response.stored))
}

/// `msg` with the bearer token, when one is given.
fn authorized<T>(msg: T, args: &Args) -> Result<Request<T>, PushFailure> {
    let bearer = Bearer::new(args.token.as_deref().unwrap_or_default());
    Ok(bearer.map_err(PushFailure::Grpc)?.request(msg))
}

fn body(args: &Args) -> anyhow::Result<Vec<u8>> {
    match (&args.file, args.text.as_deref()) {
        (Some(path), _) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        (None, Some("-")) => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read standard input")?;
            Ok(buf)
        }
        (None, Some(text)) => Ok(text.as_bytes().to_vec()),
        (None, None) => bail!("give the body as TEXT, --file F, or - for standard input"),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
