//! Node-to-node delivery: one bounded queue and one task per peer, and one long-lived
//! `NodeService.DeliverStream` to it: a batch of pushes is a message on the open stream, not a
//! call (no HTTP/2 stream, headers or request task per push). Each message carries every push
//! that queued while [`IN_FLIGHT`] earlier ones were unanswered (up to [`MAX_PER_CALL`]): no
//! added wait at low load, fewer messages under load. A peer that answers UNIMPLEMENTED (an
//! older node) is called with the unary `Deliver` instead, and asked again after
//! [`UNARY_FOR`]. A stream that breaks, ends or leaves a message unanswered for
//! [`PEER_TIMEOUT`] fails the pushes it carries (`Unavailable`; the producer retries, the
//! inbox keeps them) and is opened again for the next push.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use dashmap::DashMap;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status, Streaming, transport::Channel};
use tracing::debug;

use super::{DeliverRequest, DeliverResponse, NodeServiceClient};
use crate::{
    grpc::{Bearer, ClientTls, GrpcAddr},
    protocol::pb::PushMessage,
    push::{PushError, RouteError},
    telemetry::{ClusterEvent, Metrics},
};

/// Pushes sent to one peer in one call, at most.
pub const MAX_PER_CALL: usize = 256;
/// Pushes waiting for one peer, at most (callers wait beyond it).
const QUEUE: usize = 4096;
/// Deadline of one node-to-node call, or of one message's answer on the stream.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages sent on a peer's stream and not answered yet, at most.
const IN_FLIGHT: usize = 4;
/// How long a peer without `DeliverStream` is called with `Deliver` before it is asked again.
const UNARY_FOR: Duration = Duration::from_secs(60);

type Waiter = oneshot::Sender<Result<usize, RouteError>>;
type Job = (PushMessage, Waiter);

/// The queues and tasks of every peer this node delivered to.
pub struct Peers {
    queues: DashMap<String, mpsc::Sender<Job>>,
    token: Bearer,
    tls: ClientTls,
    tasks: TaskTracker,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Peers {
    /// Peer tasks are started on `tasks` when a peer is first called, and end when `stop` is
    /// cancelled (pushes still queued then fail with `Unavailable`); the caller awaits `tasks`.
    /// `tls` is used for peers whose address is `https://` (their gRPC port serves TLS).
    pub fn new(
        token: Bearer,
        tls: ClientTls,
        tasks: TaskTracker,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { queues: DashMap::new(), token, tls, tasks, stop, metrics }
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
            let peer = Peer {
                name: addr.to_owned(),
                client,
                token: self.token.clone(),
                pipe: None,
                unary_until: None,
                metrics: self.metrics.clone(),
            };
            self.tasks.spawn(run(peer, rx, self.stop.clone()));
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

/// The error every push of a failed call or stream gets.
fn failure(s: &Status) -> RouteError {
    match s.code() {
        Code::ResourceExhausted => RouteError::Push(PushError::Overloaded(0)),
        _ => RouteError::Unavailable(s.message().to_owned()),
    }
}

fn answer_all(waiters: Vec<Waiter>, r: &DeliverResponse) {
    for (i, w) in waiters.into_iter().enumerate() {
        let _ = w.send(outcome(r, i));
    }
}

fn fail_all(waiters: Vec<Waiter>, e: &RouteError) {
    waiters.into_iter().for_each(|w| {
        let _ = w.send(Err(e.clone()));
    });
}

/// An open `DeliverStream`: the sending half, the answers, and the waiters of each message
/// sent, oldest first, with when it was sent.
struct Pipe {
    requests: mpsc::Sender<DeliverRequest>,
    answers: Streaming<DeliverResponse>,
    waiting: VecDeque<(Instant, Vec<Waiter>)>,
}

impl Pipe {
    /// Fails every push waiting on this stream (it is being dropped).
    fn fail(self, s: &Status) {
        let e = failure(s);
        self.waiting.into_iter().for_each(|(_, w)| fail_all(w, &e));
    }
}

/// One peer's connection: its stream when open, or the unary fallback.
struct Peer {
    name: String,
    client: NodeServiceClient<Channel>,
    token: Bearer,
    pipe: Option<Pipe>,
    /// Until then the peer is called with the unary `Deliver` (it has no `DeliverStream`).
    unary_until: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Peer {
    /// Whether another message may be sent now.
    fn can_send(&self) -> bool {
        self.pipe.as_ref().is_none_or(|p| p.waiting.len() < IN_FLIGHT)
    }

    /// When the oldest unanswered message on the stream times out.
    fn deadline(&self) -> Option<Instant> {
        let pipe = self.pipe.as_ref()?;
        pipe.waiting.front().map(|(sent, _)| *sent + PEER_TIMEOUT)
    }

    /// The next answer on the stream; pending while none is open. Read even while nothing is
    /// awaited, so a stream the peer closed (a restart) is noticed before the next push.
    async fn next_answer(&mut self) -> Result<Option<DeliverResponse>, Status> {
        match &mut self.pipe {
            Some(p) => p.answers.message().await,
            None => std::future::pending().await,
        }
    }

    /// Hands an answer to the oldest message's waiters; a broken or ended stream fails all.
    fn answered(&mut self, answer: Result<Option<DeliverResponse>, Status>) {
        let Some(pipe) = &mut self.pipe else { return };
        match answer {
            Ok(Some(r)) => match pipe.waiting.pop_front() {
                Some((_, waiters)) => answer_all(waiters, &r),
                None => self.broken(Status::internal("an answer to no message")),
            },
            Ok(None) => self.broken(Status::unavailable("the peer closed the delivery stream")),
            Err(s) => self.broken(s),
        }
    }

    fn broken(&mut self, s: Status) {
        debug!(peer = self.name, error = %s, "node-to-node delivery stream ended");
        if let Some(pipe) = self.pipe.take() {
            pipe.fail(&s);
        }
    }

    /// Sends one batch: on the stream (opened if needed), or as a unary call to a peer
    /// without streams.
    async fn send(&mut self, mut msgs: Vec<PushMessage>, waiters: Vec<Waiter>) {
        if self.unary_until.is_some_and(|t| Instant::now() < t) {
            return self.call(msgs, waiters).await;
        }
        if let Some(pipe) = &mut self.pipe {
            match pipe.requests.try_send(DeliverRequest { msgs }) {
                Ok(()) => return pipe.waiting.push_back((Instant::now(), waiters)),
                Err(e) => {
                    msgs = e.into_inner().msgs;
                    self.broken(Status::unavailable("the delivery stream is gone"));
                }
            }
        }
        match self.open(msgs).await {
            Ok(mut pipe) => {
                self.metrics.cluster_event(ClusterEvent::PeerStreamOpened);
                pipe.waiting.push_back((Instant::now(), waiters));
                self.pipe = Some(pipe);
            }
            Err((s, msgs)) if s.code() == Code::Unimplemented => {
                debug!(peer = self.name, "the peer has no DeliverStream: unary calls for now");
                self.metrics.cluster_event(ClusterEvent::PeerUnary);
                self.unary_until = Some(Instant::now() + UNARY_FOR);
                self.call(msgs, waiters).await;
            }
            Err((s, _)) => fail_all(waiters, &failure(&s)),
        }
    }

    /// Opens a stream whose first message carries `msgs`. On failure, gives them back (a copy
    /// is kept until the peer has answered the opening: bodies are shared, not copied).
    async fn open(&mut self, msgs: Vec<PushMessage>) -> Result<Pipe, (Status, Vec<PushMessage>)> {
        let (requests, rx) = mpsc::channel(IN_FLIGHT);
        let first = DeliverRequest { msgs: msgs.clone() };
        requests.try_send(first).expect("a new channel has room");
        let call = self.client.deliver_stream(self.token.request(ReceiverStream::new(rx)));
        let opened = tokio::time::timeout(PEER_TIMEOUT, call).await;
        let opened = opened.unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")));
        match opened {
            Ok(answers) => Ok(Pipe { requests, answers: answers.into_inner(), waiting: [].into() }),
            Err(s) => Err((s, msgs)),
        }
    }

    /// The unary `Deliver` call (peers without `DeliverStream`).
    async fn call(&mut self, msgs: Vec<PushMessage>, waiters: Vec<Waiter>) {
        let mut request = self.token.request(DeliverRequest { msgs });
        request.set_timeout(PEER_TIMEOUT);
        // The deadline is enforced here too: `grpc-timeout` alone binds only the server, and a
        // peer that stops answering must never hold this queue (and every caller) forever.
        let call = tokio::time::timeout(PEER_TIMEOUT, self.client.deliver(request)).await;
        match call.unwrap_or_else(|_| Err(Status::deadline_exceeded("the peer did not answer"))) {
            Ok(r) => answer_all(waiters, &r.into_inner()),
            Err(s) => {
                debug!(peer = self.name, error = %s, "node-to-node delivery failed");
                fail_all(waiters, &failure(&s));
            }
        }
    }
}

async fn run(mut peer: Peer, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut jobs = Vec::with_capacity(MAX_PER_CALL);
    // One timer for the oldest unanswered message, moved only when that message changes (not
    // a new timer per loop turn: this loop turns twice per cross-node push).
    let timer = tokio::time::sleep(PEER_TIMEOUT);
    tokio::pin!(timer);
    let mut armed = None;
    loop {
        let deadline = peer.deadline();
        if let Some(at) = deadline.filter(|_| deadline != armed) {
            timer.as_mut().reset(at);
        }
        armed = deadline;
        let can_send = peer.can_send();
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut jobs, MAX_PER_CALL), if can_send => {
                if n == 0 {
                    return;
                }
                let (msgs, waiters): (Vec<PushMessage>, Vec<_>) = jobs.drain(..).unzip();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = peer.send(msgs, waiters) => {}
                }
            }
            answer = peer.next_answer() => peer.answered(answer),
            () = &mut timer, if deadline.is_some() => {
                peer.broken(Status::deadline_exceeded("the peer did not answer in time"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering::Relaxed},
    };

    use futures_util::{Stream, StreamExt, future::join_all};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response};

    use super::*;
    use crate::protocol::cluster_pb::node_service_server::{NodeService, NodeServiceServer};

    /// A peer node on a real tonic server: answers each push with its receiver id as the
    /// connection count (so every answer names its push), counting what it was asked.
    #[derive(Clone, Default)]
    struct TestPeer {
        /// false: an older node, `DeliverStream` is UNIMPLEMENTED.
        streams: bool,
        /// Messages answered per stream before the peer ends it (0: never).
        end_after: usize,
        /// Takes stream messages and never answers.
        silent: bool,
        asked: Arc<AtomicUsize>,
        unary: Arc<AtomicUsize>,
    }

    fn answer(req: &DeliverRequest) -> DeliverResponse {
        let connections = req.msgs.iter().map(|m| m.receiver_id as i32).collect();
        DeliverResponse { connections, overloaded: vec![] }
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<DeliverResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl NodeService for TestPeer {
        async fn deliver(
            &self,
            r: Request<DeliverRequest>,
        ) -> Result<Response<DeliverResponse>, Status> {
            self.unary.fetch_add(1, Relaxed);
            Ok(Response::new(answer(r.get_ref())))
        }

        type DeliverStreamStream = Answers;

        async fn deliver_stream(
            &self,
            r: Request<Streaming<DeliverRequest>>,
        ) -> Result<Response<Answers>, Status> {
            self.asked.fetch_add(1, Relaxed);
            if !self.streams {
                return Err(Status::unimplemented("an older node"));
            }
            let silent = self.silent;
            let answers = r
                .into_inner()
                .filter_map(move |req| async move { (!silent).then(|| req.map(|q| answer(&q))) });
            let limit = if self.end_after == 0 { usize::MAX } else { self.end_after };
            Ok(Response::new(Box::pin(answers.take(limit))))
        }
    }

    /// Serves `peer` on a loopback port until `stop`; returns its address.
    async fn serve(peer: TestPeer, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tonic::transport::Server::builder()
            .add_service(NodeServiceServer::new(peer))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned());
        tokio::spawn(server);
        addr.to_string()
    }

    /// Serves `peer` and returns what calls it: (stop, its address, the callers, their metrics).
    async fn start(peer: &TestPeer) -> (CancellationToken, String, Peers, Arc<Metrics>) {
        let stop = CancellationToken::new();
        let addr = serve(peer.clone(), stop.clone()).await;
        let metrics = Arc::new(Metrics::new());
        let (tasks, token) = (TaskTracker::new(), Bearer::default());
        let peers = Peers::new(token, Default::default(), tasks, stop.clone(), metrics.clone());
        (stop, addr, peers, metrics)
    }

    fn push(user: i64) -> PushMessage {
        PushMessage { key: format!("k{user}"), biz_id: 9, receiver_id: user, body: vec![1].into() }
    }

    #[tokio::test]
    async fn pushes_ride_one_stream_and_each_gets_its_own_answer() {
        let peer = TestPeer { streams: true, ..Default::default() };
        let (stop, addr, peers, _) = start(&peer).await;
        let all = join_all((1..=200).map(|u| peers.deliver(&addr, push(u)))).await;
        assert_eq!(all, (1..=200).map(|u| Ok(u as usize)).collect::<Vec<_>>());
        for u in 201..=205 {
            assert_eq!(peers.deliver(&addr, push(u)).await, Ok(u as usize));
        }
        assert_eq!((peer.asked.load(Relaxed), peer.unary.load(Relaxed)), (1, 0), "one stream");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_older_peer_is_called_with_unary_deliver() {
        let peer = TestPeer { streams: false, ..Default::default() };
        let (stop, addr, peers, metrics) = start(&peer).await;
        for u in 1..=3 {
            assert_eq!(peers.deliver(&addr, push(u)).await, Ok(u as usize));
        }
        assert_eq!(peer.asked.load(Relaxed), 1, "asked once, not before every push");
        assert_eq!(peer.unary.load(Relaxed), 3);
        let text = metrics.render();
        assert!(text.contains(r#"event="unary_fallback",service="peer"} 1"#), "{text}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_stream_the_peer_ends_is_opened_again_for_the_next_push() {
        let peer = TestPeer { streams: true, end_after: 1, ..Default::default() };
        let (stop, addr, peers, _) = start(&peer).await;
        assert_eq!(peers.deliver(&addr, push(1)).await, Ok(1));
        // The end is read as it comes, before the next push is sent.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(peers.deliver(&addr, push(2)).await, Ok(2), "on a new stream");
        assert_eq!(peer.asked.load(Relaxed), 2);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_fails_its_pushes_in_time() {
        let peer = TestPeer { streams: true, silent: true, ..Default::default() };
        let (stop, addr, peers, _) = start(&peer).await;
        let within = PEER_TIMEOUT + Duration::from_secs(3);
        let got = tokio::time::timeout(within, peers.deliver(&addr, push(1))).await;
        let got = got.expect("answered within the peer timeout");
        assert!(matches!(got, Err(RouteError::Unavailable(_))), "{got:?}");
        stop.cancel();
    }

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
