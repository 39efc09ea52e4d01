//! `wsgw kick`: disconnect a user's connections (close 1008 with the given reason), on one node
//! (`--addr`) or on every registered node (`--etcd`).
//!
//! Exit codes: 0 closed at least one connection; 1 the user had none; 2 a node could not be
//! reached or refused.

use crate::exit;
use std::process::ExitCode;

use wsgw::protocol::admin_pb::KickRequest;

use crate::nodes::{NodeArgs, failed};

/// Disconnect every connection of a user, telling the client why.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    nodes: NodeArgs,
    #[arg(long)]
    user: i64,
    #[arg(long)]
    biz: i64,
    /// Only this connection (see `wsgw sessions`).
    #[arg(long)]
    conn: Option<u64>,
    /// Close reason the client sees.
    #[arg(long, default_value = "kicked")]
    reason: String,
    /// JSON for scripts: {"closed":N,"nodes":[{"node","closed"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(kick(args)).unwrap_or_else(|code| code))
}

async fn kick(args: Args) -> Result<ExitCode, ExitCode> {
    let mut per_node = Vec::new();
    for node in args.nodes.clients().await? {
        let req = KickRequest {
            biz_id: args.biz,
            user_id: args.user,
            conn_id: args.conn.unwrap_or(0),
            reason: args.reason.clone(),
        };
        let mut client = node.client.clone();
        let r = client.kick(node.request(req)).await.map_err(|s| failed(&node, &s))?;
        per_node.push((node.name.clone(), r.into_inner().closed));
    }
    let closed: u32 = per_node.iter().map(|(_, n)| n).sum();
    if args.json {
        let nodes: Vec<_> =
            per_node.iter().map(|(n, c)| serde_json::json!({"node": n, "closed": c})).collect();
        println!("{}", serde_json::json!({ "closed": closed, "nodes": nodes }));
    } else {
        println!(
            "closed {closed} connection(s) of user {} (biz {}) on {} node(s)",
            args.user,
            args.biz,
            per_node.len()
        );
    }
    Ok(exit::yes_or_no(closed > 0))
}
