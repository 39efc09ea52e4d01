//! wsgw — a WebSocket gateway between many long-lived client connections and gRPC business
//! backends.
//!
//! Map of the crate, top to bottom (dependencies point downwards; `tests/it/layers.rs` checks
//! it, ARCHITECTURE.md explains it):
//!
//! - [`node`] — builds and wires one gateway node and owns its lifecycle: bind, serve, drain.
//!   The only place that knows every other module.
//! - [`gateway`] — the connection layer: listener, handshake, the per-connection task.
//! - [`admin`] — the admin gRPC API (stats, sessions, kick, redirect, drain) and the client
//!   helpers the operator subcommands use. [`governor`] — `/health`, `/ready`, `/metrics`.
//! - [`routing`] — where a push goes (this node, peers, the offline inbox), and the gRPC
//!   `PushService` / node-to-node `NodeService` that take pushes in.
//! - [`upstream`] — client messages to gRPC backends (dedup, batching, retries, circuits).
//! - [`downstream`] — pushes to every connection of a user on this node, retransmitted until
//!   acknowledged.
//! - [`wire`] — encoding, body encryption and counting of every outgoing message.
//! - [`links`] — the registry of live connections and their bounded outbound queues.
//! - [`cluster`] — adapters below the domain: the session directory (Redis, or in memory for a
//!   single node) and offline inbox, the etcd registry and backend discovery, Kafka ingestion
//!   and presence.
//! - [`push`] — the narrow interface ingestion sources hand pushes to ([`push::PushSink`]).
//! - [`auth`] — JWT verification (and minting, for `wsgw token`); the gRPC bearer check.
//! - [`telemetry`] — metrics (names and typed event labels) and logging set-up.
//! - [`config`] — the config file, environment overrides and validation.
//! - [`grpc`] — gRPC client plumbing: validated addresses, channels, the bearer token.
//! - [`http`] — serving the small HTTP surfaces (governor, webhook) with connection and time
//!   bounds.
//! - [`protocol`] — the `gatewayapi.v1` messages and the JSON / protobuf serializers. Pure.
//! - [`shutdown`] — the node's lifecycle: phase and drain stages.
//! - [`loadtest`] — the load generator of `wsgw loadtest` (a client of the public contracts).

// The one exception, a prefetch hint, is allowed where it is (`links/order.rs`).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod downstream;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod governor;
pub mod grpc;
pub mod http;
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
