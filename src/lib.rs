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
//! - [`downstream`] — pushes to every connection of a user, retransmitted until acknowledged,
//!   and the gRPC `PushService` that takes them in.
//! - [`wire`] — encoding, body encryption and counting of every outgoing message.
//! - [`loadtest`] — the load generator of `wsgw loadtest` (a client of the public contracts).
//! - [`governor`] — the operator HTTP endpoint: `/health`, `/ready`, `/metrics`.
//! - [`links`] — the registry of live connections and their bounded outbound queues.
//! - [`auth`] — JWT verification (and minting, for `wsgw token`).
//! - [`protocol`] — the `gatewayapi.v1` messages and the JSON / protobuf serializers. Pure.
//! - [`config`] — the config file, environment overrides and validation.
//! - [`telemetry`] — metrics and logging set-up.
//! - [`shutdown`] — the node's phase (starting, running, draining, stopped).

pub mod auth;
pub mod config;
pub mod downstream;
pub mod gateway;
pub mod governor;
pub mod links;
pub mod loadtest;
pub mod node;
pub mod protocol;
pub mod shutdown;
pub mod telemetry;
pub mod upstream;
pub mod wire;
