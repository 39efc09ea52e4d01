//! Node-to-node delivery: one bounded queue and one task per peer. Each `NodeService.Deliver`
//! call carries every push that queued while the previous call was in flight (up to
//! [`MAX_PER_CALL`]): no added wait at low load, far fewer calls under load.

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;
use tracing::debug;

use super::{DeliverRequest, DeliverResponse, NodeServiceClient};
use crate::{
    grpc::{Bearer, ClientTls, GrpcAddr},
    protocol::pb::PushMessage,
    push::{PushError, RouteError},
};

/// Pushes sent to one peer in one call, at most.
pub const MAX_PER_CALL: usize = 256;
/// Pushes waiting for one peer, at most (callers wait beyond it).
const QUEUE: usize = 4096;
/// Deadline of one node-to-node call.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

type Job = (PushMessage, oneshot::Sender<Result<usize, RouteError>>);

/// The queues and tasks of every peer this node delivered to.
pub struct Peers {
    queues: DashMap<String, mpsc::Sender<Job>>,
    token: Bearer,
    tls: ClientTls,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Peers {
    /// Peer tasks are started on `tasks` when a peer is first called, and end when `stop` is
    /// cancelled (pushes still queued then fail with `Unavailable`); the caller awaits `tasks`.
    /// `tls` is used for peers whose address is `https://` (their gRPC port serves TLS).
    pub fn new(token: Bearer, tls: ClientTls, tasks: TaskTracker, stop: CancellationToken) -> Self {
        Self { queues: DashMap::new(), token, tls, tasks, stop }
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
        let uri = GrpcAddr::parse(addr).map_err(|e| RouteError::Unavailable(e.to_string()))?;
        let channel = uri.lazy_channel(Duration::from_secs(1), &self.tls);
        let client =
            NodeServiceClient::new(channel.map_err(|e| RouteError::Unavailable(e.to_string()))?);
        let queue = self.queues.entry(addr.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let peer = addr.to_owned();
            self.tasks.spawn(run(peer, client, self.token.clone(), rx, self.stop.clone()));
            tx
        });
        Ok(queue.clone())
    }
}

/// What the peer's answer says of the `i`th push of the call.
fn outcome(r: &DeliverResponse, i: usize) -> Result<usize, RouteError> {
    if r.overloaded.get(i).copied().unwrap_or(false) {
        return Err(PushError::Overloaded(0).into());
    }
    Ok(r.connections.get(i).copied().unwrap_or(0).max(0) as usize)
}

async fn run(
    peer: String,
    mut client: NodeServiceClient<Channel>,
    token: Bearer,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let mut jobs = Vec::with_capacity(MAX_PER_CALL);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut jobs, MAX_PER_CALL) => n,
        };
        if n == 0 {
            return;
        }
        let (msgs, waiters): (Vec<PushMessage>, Vec<_>) = jobs.drain(..).unzip();
        let mut request = token.request(DeliverRequest { msgs });
        request.set_timeout(PEER_TIMEOUT);
        // The deadline is enforced here too: `grpc-timeout` alone binds only the server, and a
        // peer that stops answering must never hold this queue (and every caller) forever.
        let call = tokio::time::timeout(PEER_TIMEOUT, client.deliver(request));
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = call => answer.unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded("the peer did not answer in time"))
            }),
        };
        match answer {
            Ok(r) => {
                let r = r.into_inner();
                for (i, w) in waiters.into_iter().enumerate() {
                    let _ = w.send(outcome(&r, i));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_push_of_a_call_gets_its_own_outcome() {
        let r = DeliverResponse { connections: vec![2, 0, 0, -1], overloaded: vec![false, true] };
        let got: Vec<_> = (0..5).map(|i| outcome(&r, i)).collect();
        assert_eq!(got[0], Ok(2));
        assert_eq!(got[1], Err(PushError::Overloaded(0).into()), "only this one was refused");
        assert_eq!(got[2], Ok(0), "a missing flag (an older peer) is not a refusal");
        assert_eq!(got[3], Ok(0), "never negative");
        assert_eq!(got[4], Ok(0), "a short answer counts as none");
    }
}
