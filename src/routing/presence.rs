//! `gatewayapi.v1.PresenceService` (a wsgw addition, behind the backend token): is a user
//! online, on how many connections and nodes — cluster-wide from the session directory (live
//! nodes only), or this node's links on a single node. Backends need not consume Kafka presence
//! events to answer "is this user online?". Reads only.

use std::{collections::HashSet, sync::Arc};

use tonic::{Request, Response, Status};

use crate::{
    auth::Identity,
    cluster::{SessionDirectory, SessionQuery},
    protocol::pb::{PresenceRequest, PresenceResponse, presence_service_server::PresenceService},
};

pub struct PresenceApi {
    directory: Arc<dyn SessionDirectory>,
}

impl PresenceApi {
    pub fn new(directory: Arc<dyn SessionDirectory>) -> Self {
        Self { directory }
    }
}

#[tonic::async_trait]
impl PresenceService for PresenceApi {
    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let r = request.into_inner();
        if r.biz_id <= 0 || r.user_id <= 0 {
            return Err(Status::invalid_argument("biz_id and user_id must be positive"));
        }
        let who = Identity { biz_id: r.biz_id, user_id: r.user_id };
        let sessions = self
            .directory
            .sessions(SessionQuery::User(who))
            .await
            .map_err(|e| Status::unavailable(format!("session directory: {e}")))?;
        let nodes: HashSet<&str> = sessions.iter().map(|s| s.node.as_str()).collect();
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Response::new(PresenceResponse {
            online: !sessions.is_empty(),
            connections: count(sessions.len()),
            nodes: count(nodes.len()),
        }))
    }
}
