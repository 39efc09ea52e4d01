//! Integration tests: real nodes on port 0, driven by real WebSocket and HTTP clients.
//! One binary (so linking happens once), one module per area.

mod support;

mod admin;
mod auth;
mod cli;
mod cluster;
mod connections;
mod downstream;
mod grpc_tls;
mod hostile;
mod http;
mod layers;
mod lifecycle;
mod loadtest;
mod prometheus;
mod protocol;
mod public_keys;
mod tls;
mod upstream;
