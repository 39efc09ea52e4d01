//! The client wire protocol: `gatewayapi.v1` messages (generated from `proto/`) and the two
//! serializers of SPEC §3.
//!
//! Owns: the generated types, the canonical protobuf-JSON mapping (via pbjson) and binary
//! protobuf (via prost). Pure data and parsing: this module must never do I/O, hold state or
//! know about connections.

mod codec;
mod encryption;

/// Types generated from `proto/gatewayapi/v1/gateway.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gatewayapi.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/gatewayapi.v1.serde.rs"));
}

/// The admin API (`wsgw.admin.v1`), with canonical protobuf-JSON serde impls.
#[allow(clippy::all, missing_docs)]
pub mod admin_pb {
    include!(concat!(env!("OUT_DIR"), "/wsgw.admin.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/wsgw.admin.v1.serde.rs"));
}

/// The node-to-node API (`wsgw.cluster.v1`).
#[allow(clippy::all, missing_docs)]
pub mod cluster_pb {
    include!(concat!(env!("OUT_DIR"), "/wsgw.cluster.v1.rs"));
}

pub use codec::{DecodeError, Serializer};
pub use encryption::{BodyCipher, CipherError, EncryptionAlgorithm};
pub use pb::message::CommandType;
pub use pb::{ErrorInfo, Message};

/// The `ErrorInfo.code` values.
pub use pb::error_info::Code as ErrorCode;
