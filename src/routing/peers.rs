//! Node-to-node delivery: one bounded queue and one task per peer. Each `NodeService.Deliver`
//! call carries every push that queued while the previous call was in flight (up to
//! [`MAX_BATCH`]): no added wait at low load, far fewer calls under load.

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tracing::debug;

use super::{DeliverRequest, NodeServiceClient, RouteError};
use crate::{downstream::PushError, protocol::pb::PushMessage};

/// Pushes sent to one peer in one call, at most.
pub const MAX_BATCH: usize = 256;
/// Pushes waiting for one peer, at most (callers wait beyond it).
const QUEUE: usize = 4096;
/// Deadline of one node-to-node call.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

type Job = (PushMessage, oneshot::Sender<Result<usize, RouteError>>);

/// The queues and tasks of every peer this node delivered to.
pub(super) struct Peers {
    queues: DashMap<String, mpsc::Sender<Job>>,
    token: Option<MetadataValue<Ascii>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Peers {
    pub fn new(token: Option<MetadataValue<Ascii>>) -> Self {
        Self {
            queues: DashMap::new(),
            token,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Delivers `msg` on the peer at `addr`: how many connections took it there.
    pub async fn deliver(&self, addr: &str, msg: PushMessage) -> Result<usize, RouteError> {
        let queue = self.queue(addr)?;
        let (done, result) = oneshot::channel();
        let gone = || RouteError::Unavailable("node-to-node delivery stopped".into());
        queue.send((msg, done)).await.map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    fn queue(&self, addr: &str) -> Result<mpsc::Sender<Job>, RouteError> {
        if let Some(q) = self.queues.get(addr) {
            return Ok(q.clone());
        }
        let uri = crate::upstream::endpoint_uri(addr).map_err(RouteError::Unavailable)?;
        let channel = Channel::builder(uri).connect_timeout(Duration::from_secs(1)).connect_lazy();
        let client = NodeServiceClient::new(channel);
        let queue = self.queues.entry(addr.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let peer = addr.to_owned();
            self.tasks.spawn(run(peer, client, self.token.clone(), rx, self.stop.clone()));
            tx
        });
        Ok(queue.clone())
    }

    /// Stops every peer task; pushes still queued fail with `Unavailable`.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn run(
    peer: String,
    mut client: NodeServiceClient<Channel>,
    token: Option<MetadataValue<Ascii>>,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut jobs, MAX_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let (msgs, waiters): (Vec<PushMessage>, Vec<_>) = jobs.drain(..).unzip();
        let mut request = tonic::Request::new(DeliverRequest { msgs });
        request.set_timeout(PEER_TIMEOUT);
        if let Some(token) = &token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = client.deliver(request) => answer,
        };
        match answer {
            Ok(r) => {
                let counts = r.into_inner().connections;
                for (i, w) in waiters.into_iter().enumerate() {
                    let n = counts.get(i).copied().unwrap_or(0).max(0) as usize;
                    let _ = w.send(Ok(n));
                }
            }
            Err(s) => {
                debug!(peer, error = %s, "node-to-node delivery failed");
                let e = match s.code() {
                    tonic::Code::ResourceExhausted => RouteError::Push(PushError::Overloaded(0)),
                    _ => RouteError::Unavailable(s.message().to_owned()),
                };
                waiters.into_iter().for_each(|w| {
                    let _ = w.send(Err(e.clone()));
                });
            }
        }
    }
}
