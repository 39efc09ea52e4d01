//! Batching per business through `BatchBackendService.BatchOnReceive`: each client gets its own
//! answer from one call. At most `max_in_flight` batch calls of a business are outstanding;
//! while they are, messages queue, and the next call carries everything queued (up to
//! `max_size`). So a lone message leaves at once (no added wait at low load) and batches grow
//! with the load. `max_wait` > 0 additionally holds each batch open that long for more messages
//! (fewer, larger calls at the price of that much latency). A backend that answers
//! UNIMPLEMENTED lacks the batch service: the batch (and every later message of that business)
//! falls back to single calls.

use std::sync::Arc;

use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::info;

use super::{BizBackends, Upstream, UpstreamError, status_text};
use crate::{
    config::BatchConfig,
    protocol::pb::{BatchOnReceiveRequest, OnReceiveRequest, OnReceiveResponse},
};

/// Queue depth of one business's batcher, in batches.
const QUEUE_BATCHES: usize = 16;

pub(crate) struct BatchItem {
    pub request: OnReceiveRequest,
    pub sender: super::Sender,
    pub reply: oneshot::Sender<Result<OnReceiveResponse, UpstreamError>>,
}

/// The collecting task of one business.
pub(super) struct Batcher {
    biz_id: i64,
    config: BatchConfig,
    queue: mpsc::Receiver<BatchItem>,
}

impl Batcher {
    pub(super) fn new(biz_id: i64, config: BatchConfig) -> (Self, mpsc::Sender<BatchItem>) {
        let (sender, queue) = mpsc::channel(config.max_size.saturating_mul(QUEUE_BATCHES));
        (Self { biz_id, config, queue }, sender)
    }

    pub(super) async fn run(mut self, upstream: Arc<Upstream>, stop: CancellationToken) {
        let calls = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        loop {
            let first = tokio::select! {
                item = self.queue.recv() => match item { Some(item) => item, None => return },
                _ = stop.cancelled() => return,
            };
            let mut items = vec![first];
            if !self.config.max_wait.is_zero() {
                self.collect_until(&mut items, Instant::now() + self.config.max_wait).await;
            }
            // Messages keep queueing while every call slot is taken; the call that gets the
            // next slot takes them all.
            let permit = tokio::select! {
                permit = calls.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            while items.len() < self.config.max_size {
                match self.queue.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            let Some(biz) = upstream.backends.get(self.biz_id) else {
                answer_all(items, Err(UpstreamError::NoBackend(self.biz_id)));
                continue;
            };
            let this = upstream.clone();
            upstream.tasks.spawn(async move {
                this.send_batch(&biz, items).await;
                drop(permit);
            });
        }
    }

    /// Adds queued messages to `items` until it is full or `deadline` passes.
    async fn collect_until(&mut self, items: &mut Vec<BatchItem>, deadline: Instant) {
        while items.len() < self.config.max_size {
            tokio::select! {
                item = self.queue.recv() => match item { Some(item) => items.push(item), None => return },
                _ = sleep_until(deadline) => return,
            }
        }
    }
}

fn answer_all(items: Vec<BatchItem>, result: Result<OnReceiveResponse, UpstreamError>) {
    for item in items {
        let _ = item.reply.send(result.clone());
    }
}

impl Upstream {
    async fn send_batch(&self, biz: &BizBackends, items: Vec<BatchItem>) {
        let reqs: Vec<OnReceiveRequest> = items.iter().map(|i| i.request.clone()).collect();
        let senders: Vec<super::Sender> = items.iter().map(|i| i.sender).collect();
        let count = reqs.len();
        let result = self
            .with_retries(biz, |endpoint| {
                let batch = BatchOnReceiveRequest { reqs: reqs.clone() };
                let request =
                    super::sender::with_senders(batch, &senders, self.node_header.as_ref());
                async move {
                    endpoint
                        .batch_client()
                        .batch_on_receive(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        match result {
            Ok(Ok(batch)) if batch.res.len() == count => {
                for (item, response) in items.into_iter().zip(batch.res) {
                    let _ = item.reply.send(Ok(response));
                }
            }
            Ok(Ok(batch)) => {
                let reason =
                    format!("batch of {count} answered with {} responses", batch.res.len());
                answer_all(items, Err(UpstreamError::Unavailable(reason)));
            }
            Ok(Err(e)) => answer_all(items, Err(e)),
            Err(status) if status.code() == Code::Unimplemented => {
                info!(biz = biz.biz_id, "backend has no BatchBackendService; using single calls");
                biz.batch_unsupported();
                let calls = items.into_iter().map(|item| async move {
                    let _ = item.reply.send(self.call_one(biz, item.request, item.sender).await);
                });
                futures_util::future::join_all(calls).await;
            }
            Err(status) => answer_all(items, Err(UpstreamError::Rejected(status_text(&status)))),
        }
    }
}
