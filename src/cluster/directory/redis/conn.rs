//! The connection to one Redis or to a Redis Cluster, and the batches of commands the
//! directory sends through it.
//!
//! One Redis: a `ConnectionManager` (reconnects by itself), batches go as one pipeline. A Redis
//! Cluster: redis-rs's cluster connection (follows the slot map, MOVED and ASK), and since a
//! cluster pipeline must stay in one slot while a batch spans many users, a batch's commands are
//! sent concurrently over its multiplexed connections, each to its own slot. Every command of the
//! directory names its keys (scripts declare theirs and touch one slot), so either way each
//! command is routed where its keys live. Order between slots is kept only across barriers
//! ([`Batch::barrier`]).

use std::time::Duration;

use futures_util::future::join_all;
use redis::{
    ClientTlsConfig, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisFuture,
    RedisResult, ScriptInvocation, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};

use crate::grpc::ClientTlsFiles;

/// How long connecting and each answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one Redis or to a Redis Cluster; cheap to clone. Also usable for the
/// directory's keys from outside (tests, tools) with redis-rs's `AsyncCommands`.
#[derive(Clone)]
pub enum Redis {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How to reach Redis beyond its URLs: the TLS files of `rediss://` URLs (a private CA, a client
/// certificate) and an ACL user (Redis 6+), which override the URLs' own credentials.
#[derive(Clone, Debug, Default)]
pub struct RedisAuth {
    pub tls: ClientTlsFiles,
    pub username: String,
    pub password: String,
}

impl RedisAuth {
    /// The TLS files, read; none when no file is set (`rediss://` then trusts the system roots).
    fn certificates(&self) -> RedisResult<Option<TlsCertificates>> {
        let t = &self.tls;
        if t.ca.is_none() && t.cert.is_none() && t.key.is_none() {
            return Ok(None);
        }
        let client_tls = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: std::fs::read(cert)?,
                client_key: std::fs::read(key)?,
            }),
            _ => None,
        };
        let root_cert = t.ca.as_deref().map(std::fs::read).transpose()?;
        Ok(Some(TlsCertificates { client_tls, root_cert }))
    }

    fn apply(&self, info: ConnectionInfo) -> ConnectionInfo {
        let mut redis = info.redis_settings().clone();
        if !self.username.is_empty() {
            redis = redis.set_username(&self.username);
        }
        if !self.password.is_empty() {
            redis = redis.set_password(&self.password);
        }
        info.set_redis_settings(redis)
    }
}

impl Redis {
    /// Connects lazily (the first command connects): to the one Redis at `urls[0]`, or, when
    /// `cluster`, to the cluster these seed nodes belong to.
    pub fn open(urls: &[String], cluster: bool) -> RedisResult<Self> {
        Self::open_with(urls, cluster, &RedisAuth::default())
    }

    /// [`Redis::open`] with TLS files and an ACL user.
    pub fn open_with(urls: &[String], cluster: bool, auth: &RedisAuth) -> RedisResult<Self> {
        let tls = urls.iter().any(|u| u.starts_with("rediss://"));
        let certs = if tls {
            // rustls needs a process-wide provider; the node's is ring (as for its TLS ports).
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
            auth.certificates()?
        } else {
            None
        };
        if cluster {
            let config = ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT);
            let mut client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .retries(1)
                .max_retry_wait(500);
            if !auth.username.is_empty() {
                client = client.username(&auth.username);
            }
            if !auth.password.is_empty() {
                client = client.password(&auth.password);
            }
            if let Some(certs) = certs {
                client = client.certs(certs);
            }
            let client = client.build()?;
            return Ok(Redis::Cluster(client.get_pending_async_connection_with_config(config)));
        }
        let url = urls.first().map(String::as_str).unwrap_or_default();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let info = auth.apply(url.into_connection_info()?);
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(info, certs)?,
            None => redis::Client::open(info)?,
        };
        Ok(Redis::One(ConnectionManager::new_lazy_with_config(client, config)?))
    }

    /// Runs `batch`; the replies of its kept commands, in order, as `T`. The first command that
    /// failed fails the whole (the others may have been applied).
    pub(super) async fn run<T: FromRedisValue>(&self, batch: &Batch) -> RedisResult<T> {
        match self {
            Redis::One(c) => {
                let mut pipe = redis::pipe();
                for (cmd, keep) in &batch.cmds {
                    pipe.add_command(cmd.clone());
                    if !keep {
                        pipe.ignore();
                    }
                }
                pipe.query_async(&mut c.clone()).await
            }
            Redis::Cluster(c) => {
                let mut kept = Vec::with_capacity(batch.cmds.len());
                let mut start = 0;
                for end in batch.barriers.iter().copied().chain([batch.cmds.len()]) {
                    let wave = &batch.cmds[start..end];
                    start = end;
                    let sent = wave.iter().map(|(cmd, _)| {
                        let mut c = c.clone();
                        async move { c.req_packed_command(cmd).await }
                    });
                    for (reply, (_, keep)) in join_all(sent).await.into_iter().zip(wave) {
                        let reply = reply?;
                        if let Value::ServerError(e) = reply {
                            return Err(e.into());
                        }
                        if *keep {
                            kept.push(reply);
                        }
                    }
                }
                Ok(T::from_redis_value(Value::Array(kept))?)
            }
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::One(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::One(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::One(c) => c.get_db(),
            Redis::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands sent together (see [`Redis::run`]); a command marked ignored gives no reply. On a
/// cluster, the commands between two barriers go concurrently, and each group only after the
/// one before has been answered; on one Redis the pipeline keeps every command's order anyway.
#[derive(Default)]
pub(super) struct Batch {
    cmds: Vec<(Cmd, bool)>,
    barriers: Vec<usize>,
}

impl Batch {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Adds `cmd`; its reply is kept unless [`Batch::ignore`] follows.
    pub(super) fn add(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push((cmd, true));
        self
    }

    /// Adds a script call (EVALSHA; see `scripts.rs` for when the scripts are loaded).
    pub(super) fn script(&mut self, call: &ScriptInvocation<'_>) -> &mut Self {
        self.add(Cmd::invoke_script(call))
    }

    /// Drops the reply of the command added last.
    pub(super) fn ignore(&mut self) -> &mut Self {
        if let Some(last) = self.cmds.last_mut() {
            last.1 = false;
        }
        self
    }

    /// What was added so far is applied before anything added later.
    pub(super) fn barrier(&mut self) -> &mut Self {
        self.barriers.push(self.cmds.len());
        self
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The commands, for tests of what a batch holds.
    #[cfg(test)]
    pub(super) fn commands(&self) -> impl Iterator<Item = &Cmd> {
        self.cmds.iter().map(|(c, _)| c)
    }
}
