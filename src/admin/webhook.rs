//! The Grafana contact point behind `wsgw alert-webhook`: `POST /webhook/v1` takes a Grafana
//! (unified alerting) webhook body and, for each **firing** alert, redirects a share of the named
//! node's connections to its least-loaded peers through the admin API.
//!
//! The node is named by the alert's labels: `node_id`, then the configured label, then
//! `instance` (matched against a registered node's id, its `governor=` label — the address
//! Prometheus scrapes — or its WebSocket `ip:port`). Resolved alerts do nothing. An alert
//! (by fingerprint, or by its labels) that was acted on within the cool-down is not acted on
//! again, so Grafana's repeated deliveries are harmless. Requests must carry
//! `Authorization: Bearer <token>` or basic auth with the configured credentials.
//!
//! Owns: the decision what to do with one delivery. Must never act on an unauthenticated request.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::client::{self, NodeClient, Target};
use crate::{cluster::NodeEntry, grpc::ClientTls, protocol::admin_pb::RedirectRequest};

/// How the webhook acts.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The nodes: one address, or the etcd registry.
    pub target: Target,
    /// The nodes' gRPC token.
    pub admin_token: String,
    /// Accepted `Authorization: Bearer` token (empty: none accepted).
    pub token: String,
    /// Accepted basic auth `user:password` (empty: none accepted).
    pub basic_auth: String,
    /// Share of a node's connections to redirect.
    pub fraction: f64,
    /// Label naming the node, tried after `node_id`.
    pub label: String,
    /// An alert acted on is not acted on again within this time.
    pub cooldown: Duration,
    /// TLS of nodes with an `https://` gRPC address.
    pub tls: ClientTls,
}

/// A Grafana webhook body (only what is used).
#[derive(Debug, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub fingerprint: String,
}

/// What was done for one alert.
#[derive(Debug, Serialize, PartialEq)]
pub struct Action {
    pub alert: String,
    pub node: String,
    /// redirected, ignored_resolved, skipped_cooldown, unknown_node, failed
    pub action: String,
    pub redirected: u32,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub actions: Vec<Action>,
}

struct Webhook {
    config: WebhookConfig,
    acted: Mutex<HashMap<String, Instant>>,
}

/// The webhook's routes.
pub fn router(config: WebhookConfig) -> Router {
    let state = Arc::new(Webhook { config, acted: Mutex::default() });
    Router::new().route("/webhook/v1", post(handle)).with_state(state)
}

async fn handle(
    State(hook): State<Arc<Webhook>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    if !hook.authorized(&headers) {
        let err = serde_json::json!({"error": "missing or wrong credentials"});
        return (StatusCode::UNAUTHORIZED, Json(err));
    }
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let err = serde_json::json!({"error": format!("not a Grafana webhook body: {e}")});
            return (StatusCode::BAD_REQUEST, Json(err));
        }
    };
    let answer = hook.act(payload).await;
    let failed = answer.actions.iter().any(|a| a.action == "failed");
    let status = if failed { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    (status, Json(serde_json::to_value(answer).unwrap_or_default()))
}

impl Webhook {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let c = &self.config;
        // Constant-time comparisons: the answer's timing says nothing about a guess.
        if let Some(token) = given.strip_prefix("Bearer ") {
            return !c.token.is_empty() && bool::from(token.as_bytes().ct_eq(c.token.as_bytes()));
        }
        if let Some(basic) = given.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim());
            let pair = decoded.unwrap_or_default();
            return !c.basic_auth.is_empty() && bool::from(pair.ct_eq(c.basic_auth.as_bytes()));
        }
        false
    }

    async fn act(&self, payload: Payload) -> Answer {
        let mut actions = Vec::new();
        let mut nodes: Option<Vec<(NodeEntry, NodeClient)>> = None;
        for alert in payload.alerts {
            let id = alert_id(&alert);
            let mut action = Action {
                alert: id.clone(),
                node: String::new(),
                action: String::new(),
                redirected: 0,
                detail: String::new(),
            };
            if alert.status != "firing" {
                action.action = "ignored_resolved".into();
                actions.push(action);
                continue;
            }
            if nodes.is_none() {
                nodes = Some(self.nodes().await.unwrap_or_else(|e| {
                    action.detail = e.to_string();
                    Vec::new()
                }));
            }
            let Some((entry, node)) = self.find(&alert, nodes.as_deref().unwrap_or_default())
            else {
                action.action = "unknown_node".into();
                if action.detail.is_empty() {
                    action.detail = "no registered node matches the alert's labels".into();
                }
                actions.push(action);
                continue;
            };
            action.node = entry.id.clone();
            let key = format!("{id}@{}", entry.id);
            if self.recently(&key) {
                action.action = "skipped_cooldown".into();
                actions.push(action);
                continue;
            }
            let req = RedirectRequest { fraction: self.config.fraction, count: 0 };
            match node.client.clone().redirect(node.request(req)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.mark(key);
                    action.action = "redirected".into();
                    action.redirected = r.redirected;
                    let to: Vec<String> = r.targets.iter().map(|t| t.id.clone()).collect();
                    action.detail = format!("to {}", to.join(", "));
                }
                Err(s) => {
                    action.action = "failed".into();
                    action.detail = format!("{:?}: {}", s.code(), s.message());
                }
            }
            actions.push(action);
        }
        Answer { actions }
    }

    async fn nodes(&self) -> Result<Vec<(NodeEntry, NodeClient)>, client::ReachError> {
        let token = &self.config.admin_token;
        match &self.config.target {
            Target::Addr(addr) => {
                let entry = NodeEntry { id: addr.clone(), ..NodeEntry::default() };
                Ok(vec![(entry, client::node(addr, addr, token, &self.config.tls)?)])
            }
            Target::Etcd(etcd, prefix) => client::registered(etcd, prefix)
                .await?
                .into_iter()
                .filter_map(|e| {
                    let addr = e.grpc_addr()?.to_owned();
                    Some(client::node(&e.id, &addr, token, &self.config.tls).map(|c| (e, c)))
                })
                .collect(),
        }
    }

    fn find<'a>(
        &self,
        alert: &Alert,
        nodes: &'a [(NodeEntry, NodeClient)],
    ) -> Option<&'a (NodeEntry, NodeClient)> {
        let single = matches!(self.config.target, Target::Addr(_));
        let entries: Vec<&NodeEntry> = nodes.iter().map(|(e, _)| e).collect();
        named_node(alert, &self.config.label, &entries, single).map(|i| &nodes[i])
    }

    fn recently(&self, key: &str) -> bool {
        let acted = self.acted.lock().unwrap_or_else(|e| e.into_inner());
        acted.get(key).is_some_and(|at| at.elapsed() < self.config.cooldown)
    }

    fn mark(&self, key: String) {
        let mut acted = self.acted.lock().unwrap_or_else(|e| e.into_inner());
        acted.retain(|_, at| at.elapsed() < self.config.cooldown);
        acted.insert(key, Instant::now());
    }
}

/// Which of `nodes` the alert names: by the label `node_id`, then `label`, then `instance`, each
/// matched against a node's id, its `governor=` address or its WebSocket `ip:port`. A `single`
/// node reached by address is always the one.
fn named_node(alert: &Alert, label: &str, nodes: &[&NodeEntry], single: bool) -> Option<usize> {
    if single && nodes.len() == 1 {
        return Some(0);
    }
    let by = |value: &str| {
        nodes.iter().position(|e| {
            e.id == value
                || e.labels.iter().any(|l| l.strip_prefix("governor=") == Some(value))
                || format!("{}:{}", e.ip, e.port) == value
        })
    };
    ["node_id", label, "instance"]
        .iter()
        .filter(|l| !l.is_empty())
        .find_map(|l| alert.labels.get(*l).and_then(|v| by(v)))
}

/// The alert's fingerprint, or its labels when Grafana sent none.
fn alert_id(alert: &Alert) -> String {
    match alert.fingerprint.as_str() {
        "" => alert.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        f => f.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ip: &str, port: i32, governor: &str) -> NodeEntry {
        let labels = vec!["zone=a".into(), format!("governor={governor}")];
        NodeEntry { id: id.into(), ip: ip.into(), port, labels, ..NodeEntry::default() }
    }

    fn alert(labels: &[(&str, &str)]) -> Alert {
        let labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Alert { status: "firing".into(), labels, fingerprint: String::new() }
    }

    #[test]
    fn alerts_name_nodes_by_id_label_governor_or_websocket_address() {
        let a = node("gw-a", "10.0.0.1", 9002, "10.0.0.1:9003");
        let b = node("gw-b", "10.0.0.2", 9002, "10.0.0.2:9003");
        let nodes = [&a, &b];
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, Option<usize>);
        let cases: &[Case] = &[
            ("node_id", &[("node_id", "gw-b")], "", Some(1)),
            ("configured label", &[("pod", "gw-a")], "pod", Some(0)),
            ("instance = governor address", &[("instance", "10.0.0.2:9003")], "", Some(1)),
            ("instance = websocket address", &[("instance", "10.0.0.1:9002")], "", Some(0)),
            ("node_id wins", &[("node_id", "gw-a"), ("instance", "10.0.0.2:9003")], "", Some(0)),
            ("unknown instance", &[("instance", "10.9.9.9:9003")], "", None),
            ("label not configured", &[("pod", "gw-a")], "", None),
            ("no labels", &[], "", None),
        ];
        for (what, labels, label, want) in cases {
            assert_eq!(named_node(&alert(labels), label, &nodes, false), *want, "{what}");
        }
    }

    #[test]
    fn a_single_addressed_node_is_always_the_one() {
        let only = node("127.0.0.1:9004", "", 0, "");
        let anything = alert(&[("instance", "elsewhere:1")]);
        assert_eq!(named_node(&anything, "", &[&only], true), Some(0));
        assert_eq!(named_node(&anything, "", &[&only], false), None, "from etcd it must match");
    }
}

/// Feeds an untrusted body to the payload parser and the node matching (the `webhook_json` fuzz
/// target), against a fixed registry.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_payload(body: &[u8], label: &str) {
    let Ok(payload) = serde_json::from_slice::<Payload>(body) else { return };
    let node = |id: &str, ip: &str| NodeEntry {
        id: id.into(),
        ip: ip.into(),
        port: 9002,
        labels: vec![format!("governor={ip}:9003"), format!("grpc={ip}:9004")],
        ..NodeEntry::default()
    };
    let (a, b) = (node("node-1", "10.0.0.1"), node("node-2", "10.0.0.2"));
    for alert in &payload.alerts {
        let _ = alert_id(alert);
        let _ = named_node(alert, label, &[&a, &b], false);
        let _ = named_node(alert, label, &[&a], true);
    }
}
