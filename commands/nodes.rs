//! The flags every operator subcommand shares: which node(s) to talk to, and the token.

use crate::exit;
use std::process::ExitCode;

use wsgw::admin::client::{self, NodeClient, Target};

/// Which node(s): one address, or every node registered in etcd.
#[derive(clap::Args, Clone)]
pub struct TargetArgs {
    /// One node's gRPC address (server.grpc.listen).
    #[arg(long, default_value = "127.0.0.1:9004", conflicts_with = "etcd")]
    pub addr: String,
    /// The nodes registered in etcd instead (host:port[,host:port]).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of the registry in etcd (cluster.etcd.prefix).
    #[arg(long, default_value = "")]
    pub etcd_prefix: String,
}

impl TargetArgs {
    pub fn target(&self) -> Target {
        match self.etcd.is_empty() {
            true => Target::Addr(self.addr.clone()),
            false => Target::Etcd(self.etcd.clone(), self.etcd_prefix.clone()),
        }
    }

    /// Whether the nodes come from the registry (so each answers for itself).
    pub fn whole_cluster(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// The node(s) and the token of the operator subcommands.
#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    #[command(flatten)]
    pub to: TargetArgs,
    /// Bearer token (server.grpc.token).
    #[arg(long, default_value = "")]
    pub token: String,
}

impl NodeArgs {
    pub fn target(&self) -> Target {
        self.to.target()
    }

    pub fn whole_cluster(&self) -> bool {
        self.to.whole_cluster()
    }

    /// Clients for the addressed nodes, or the exit code after printing why there are none.
    pub async fn clients(&self) -> Result<Vec<NodeClient>, ExitCode> {
        client::nodes(&self.target(), &self.token).await.map_err(|e| {
            eprintln!("error: {e}");
            exit::failed()
        })
    }
}

/// Prints a failed call and returns the failure exit code.
pub fn failed(node: &NodeClient, status: &tonic::Status) -> ExitCode {
    eprintln!("error: {} ({}): {:?}: {}", node.name, node.addr, status.code(), status.message());
    exit::failed()
}
