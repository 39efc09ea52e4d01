//! wsgw — a WebSocket gateway between many long-lived client connections and gRPC business
//! backends.
//!
//! Map of the crate (dependencies point downwards):
//!
//! - [`node`] — wiring and lifecycle of one gateway node: bind, serve, drain. The only place that
//!   knows every other module.
//! - [`gateway`] — the connection layer: listener, handshake, the per-connection task and the
//!   registry of live links.
//! - [`governor`] — the operator HTTP endpoint: `/health`, `/ready`, `/metrics`.
//! - [`auth`] — JWT verification (and minting, for `wsgw token`).
//! - [`protocol`] — the `gatewayapi.v1` messages and the JSON / protobuf serializers. Pure.
//! - [`config`] — the config file, environment overrides and validation.
//! - [`telemetry`] — metrics and logging set-up.
//! - [`shutdown`] — the node's phase (starting, running, draining, stopped).

pub mod auth;
pub mod config;
pub mod gateway;
pub mod governor;
pub mod node;
pub mod protocol;
pub mod shutdown;
pub mod telemetry;
