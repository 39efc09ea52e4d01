//! wsgw — a WebSocket gateway between many long-lived client connections and gRPC business
//! backends.
//!
//! Map of the crate (dependencies point downwards):
//!
//! - [`node`] — wiring and lifecycle of one gateway node: bind, serve, drain. The only place that
//!   knows every other module.
//! - [`gateway`] — the connection layer: listener, handshake, the per-connection task and the
//!   registry of live links.
//! - [`upstream`] — client messages to gRPC backends (dedup, batching, retries, circuits).
//! - [`admin`] — the admin gRPC API (stats, sessions, kick, redirect, drain) and the client
//!   helpers the operator subcommands use.
//! - [`cluster`] — Redis session directory and offline inbox, etcd node registry and backend
//!   discovery, Kafka push ingestion and presence events. All optional.
//! - [`routing`] — where a push goes (this node, peers, the offline inbox), and the gRPC
//!   `PushService` / node-to-node `NodeService` that take pushes in.
//! - [`downstream`] — pushes to every connection of a user on this node, retransmitted until
//!   acknowledged.
//! - [`wire`] — encoding, body encryption and counting of every outgoing message.
//! - [`loadtest`] — the load generator of `wsgw loadtest` (a client of the public contracts).
//! - [`governor`] — the operator HTTP endpoint: `/health`, `/ready`, `/metrics`.
//! - [`links`] — the registry of live connections and their bounded outbound queues.
//! - [`auth`] — JWT verification (and minting, for `wsgw token`).
//! - [`protocol`] — the `gatewayapi.v1` messages and the JSON / protobuf serializers. Pure.
//! - [`grpc`] — gRPC client plumbing: validated addresses, channels, the bearer token.
//! - [`config`] — the config file, environment overrides and validation.
//! - [`telemetry`] — metrics and logging set-up.
//! - [`shutdown`] — the node's phase (starting, running, draining, stopped).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod gateway;
pub mod governor;
pub mod grpc;
pub mod links;
pub mod loadtest;
pub mod node;
pub mod protocol;
pub mod push;
pub mod routing;
pub mod shutdown;
pub mod telemetry;
pub mod upstream;
pub mod wire;
