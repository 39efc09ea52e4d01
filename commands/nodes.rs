//! The flags every operator subcommand shares: which node(s) to talk to, and the token.

use crate::{exit, secrets};
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use wsgw::{
    admin::client::{self, NodeClient, Target},
    cluster::registry::EtcdAccess,
    grpc::{ClientTls, ClientTlsFiles},
};

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
    /// CA (PEM) of etcd's certificates, for https:// --etcd members; default: the system's roots.
    #[arg(long, value_name = "FILE", env = "WSGW_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd that requires one (--client-cert-auth).
    #[arg(long, value_name = "FILE", env = "WSGW_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", env = "WSGW_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, when etcd's authentication is on (cluster.etcd.username).
    #[arg(long, env = "WSGW_CLUSTER__ETCD__USERNAME")]
    pub etcd_user: Option<String>,
    /// Its password (cluster.etcd.password).
    #[arg(long, env = "WSGW_CLUSTER__ETCD__PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Read the etcd password from this file.
    #[arg(long, value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// CA (PEM) of the nodes' gRPC certificates, for https:// addresses (nodes with
    /// server.grpc.tls register theirs so); default: the system's roots.
    #[arg(long, value_name = "FILE", env = "WSGW_GRPC_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca).
    #[arg(long, value_name = "FILE", env = "WSGW_GRPC_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", env = "WSGW_GRPC_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TargetArgs {
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(match self.etcd.is_empty() {
            true => Target::Addr(self.addr.clone()),
            false => Target::Etcd(self.etcd_access()?, self.etcd_prefix.clone()),
        })
    }

    /// How to reach the etcd of `--etcd`: TLS files, user and password.
    pub fn etcd_access(&self) -> anyhow::Result<EtcdAccess> {
        let password =
            secrets::read(self.etcd_password.as_deref(), self.etcd_password_file.as_deref())?;
        Ok(EtcdAccess {
            endpoints: self.etcd.clone(),
            tls: ClientTlsFiles {
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            },
            username: self.etcd_user.clone().unwrap_or_default(),
            password,
        })
    }

    /// The TLS of calls to `https://` node addresses.
    pub fn tls(&self) -> anyhow::Result<ClientTls> {
        let files = ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        };
        ClientTls::load(&files).context("gRPC TLS")
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
    /// The operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN).
    #[arg(long, env = "WSGW_SERVER__GRPC__TOKENS__OPERATOR", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the operator token from this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl NodeArgs {
    /// The operator token from the flag, its variable or its file.
    pub fn token(&self) -> anyhow::Result<String> {
        secrets::token(self.token.as_deref(), self.token_file.as_ref())
    }

    pub fn target(&self) -> anyhow::Result<Target> {
        self.to.target()
    }

    pub fn whole_cluster(&self) -> bool {
        self.to.whole_cluster()
    }

    /// Clients for the addressed nodes, or the exit code after printing why there are none.
    pub async fn clients(&self) -> Result<Vec<NodeClient>, ExitCode> {
        let setup = self.token().and_then(|t| Ok((t, self.to.tls()?, self.target()?)));
        let (token, tls, target) = setup.map_err(|e| {
            eprintln!("error: {e:#}");
            exit::failed()
        })?;
        client::nodes(&target, &token, &tls).await.map_err(|e| {
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
