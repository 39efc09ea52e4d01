//! Reaching running nodes for the operator subcommands: one node by address, or every node
//! registered in etcd (its `grpc=host:port` label), with the bearer token on every call and
//! TLS for `https://` addresses.

use std::time::Duration;

use tonic::{Request, transport::Channel};

use crate::{
    cluster::{
        NodeEntry,
        registry::{self, EtcdAccess},
    },
    grpc::{Bearer, ClientTls, GrpcAddr, GrpcError},
    protocol::admin_pb::admin_service_client::AdminServiceClient,
};

/// Why nodes could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("cannot reach {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("no node is registered in etcd under {0}")]
    NoNodes(String),
}

/// Where the operator points a subcommand.
#[derive(Clone, Debug)]
pub enum Target {
    /// One node's gRPC address.
    Addr(String),
    /// Every node registered in etcd (how to reach it, key prefix).
    Etcd(EtcdAccess, String),
}

/// One reachable node.
#[derive(Clone)]
pub struct NodeClient {
    /// The node id (from etcd), or its address.
    pub name: String,
    pub addr: String,
    pub client: AdminServiceClient<Channel>,
    token: Bearer,
}

impl NodeClient {
    /// Wraps `msg` with the bearer token.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        self.token.request(msg)
    }
}

/// A lazily connected client for the node at `addr` (`host:port` or a URL).
pub fn node(
    name: &str,
    addr: &str,
    token: &str,
    tls: &ClientTls,
) -> Result<NodeClient, ReachError> {
    let endpoint = GrpcAddr::parse(addr)?
        .endpoint(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    Ok(NodeClient {
        name: name.to_owned(),
        addr: addr.to_owned(),
        client: AdminServiceClient::new(endpoint.connect_lazy()),
        token: Bearer::new(token)?,
    })
}

/// The registered nodes of an etcd cluster, least loaded first.
pub async fn registered(etcd: &EtcdAccess, prefix: &str) -> Result<Vec<NodeEntry>, ReachError> {
    let mut etcd = registry::connect(etcd).await?;
    Ok(registry::list_nodes(&mut etcd, prefix).await?)
}

/// Clients for every node `target` names.
pub async fn nodes(
    target: &Target,
    token: &str,
    tls: &ClientTls,
) -> Result<Vec<NodeClient>, ReachError> {
    match target {
        Target::Addr(addr) => Ok(vec![node(addr, addr, token, tls)?]),
        Target::Etcd(etcd, prefix) => {
            let entries = registered(etcd, prefix).await?;
            let nodes: Vec<NodeClient> = entries
                .iter()
                .filter_map(|e| e.grpc_addr().map(|a| node(&e.id, a, token, tls)))
                .collect::<Result<_, _>>()?;
            if nodes.is_empty() {
                return Err(ReachError::NoNodes(registry::nodes_prefix(prefix)));
            }
            Ok(nodes)
        }
    }
}
