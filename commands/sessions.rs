//! `wsgw sessions`: the connections of a node or of the whole cluster, as a table or JSON.
//!
//! With `--addr`, the node answers for the cluster from its session directory when it has one
//! (message counters are known only for its own connections), else for itself. With `--etcd`,
//! every registered node answers for its own connections, counters included.
//!
//! Exit codes: 0 listed (possibly nothing); 2 a node could not be reached or refused.

use std::{process::ExitCode, time::UNIX_EPOCH};

use wsgw::protocol::admin_pb::{ListSessionsRequest, Session};

use crate::nodes::{NodeArgs, failed};

/// List connections: node, connection id, user, remote address, since, messages in/out.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    nodes: NodeArgs,
    /// Only this business.
    #[arg(long)]
    biz: Option<i64>,
    /// Only this user (with --biz).
    #[arg(long, requires = "biz")]
    user: Option<i64>,
    /// Only connections on this node id.
    #[arg(long)]
    node: Option<String>,
    /// JSON for scripts: {"sessions":[{"nodeId","connId","bizId","userId","remoteAddr",
    /// "connectedAtMs","messagesIn","messagesOut"}]} (64-bit numbers as strings).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(list(args)).unwrap_or_else(|code| code))
}

async fn list(args: Args) -> Result<ExitCode, ExitCode> {
    let mut sessions = Vec::new();
    for node in args.nodes.clients().await? {
        let mut token = String::new();
        loop {
            let req = ListSessionsRequest {
                biz_id: args.biz.unwrap_or(0),
                user_id: args.user.unwrap_or(0),
                page_size: 1000,
                page_token: token,
                cluster: !args.nodes.whole_cluster(),
            };
            let mut client = node.client.clone();
            let page = client
                .list_sessions(node.request(req))
                .await
                .map_err(|s| failed(&node, &s))?
                .into_inner();
            sessions.extend(page.sessions);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    if let Some(id) = &args.node {
        sessions.retain(|s| &s.node_id == id);
    }
    sessions.sort_by(|a, b| (&a.node_id, a.conn_id).cmp(&(&b.node_id, b.conn_id)));
    if args.json {
        let out = serde_json::json!({ "sessions": sessions });
        println!("{out}");
    } else {
        print!("{}", table(&sessions));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human table.
fn table(sessions: &[Session]) -> String {
    let mut out = format!(
        "{:<16} {:>8} {:>10} {:>8} {:<22} {:<20} {:>8} {:>8}\n",
        "NODE", "CONN", "USER", "BIZ", "REMOTE", "SINCE (UTC)", "IN", "OUT"
    );
    for s in sessions {
        out += &format!(
            "{:<16} {:>8} {:>10} {:>8} {:<22} {:<20} {:>8} {:>8}\n",
            s.node_id,
            s.conn_id,
            s.user_id,
            s.biz_id,
            s.remote_addr,
            since(s.connected_at_ms),
            s.messages_in,
            s.messages_out
        );
    }
    let users: std::collections::HashSet<(i64, i64)> =
        sessions.iter().map(|s| (s.biz_id, s.user_id)).collect();
    out += &format!("{} connection(s), {} user(s)\n", sessions.len(), users.len());
    out
}

fn since(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_connection_and_a_summary() {
        let s = |conn, user| Session {
            node_id: "n1".into(),
            conn_id: conn,
            biz_id: 9,
            user_id: user,
            remote_addr: "127.0.0.1:5000".into(),
            connected_at_ms: 0,
            messages_in: 3,
            messages_out: 4,
        };
        let t = table(&[s(1, 7), s(2, 7), s(3, 8)]);
        assert_eq!(t.lines().count(), 5, "{t}");
        assert!(t.lines().nth(1).is_some_and(|l| l.contains("1970-01-01 00:00:00")));
        assert!(t.ends_with("3 connection(s), 2 user(s)\n"));
    }
}
