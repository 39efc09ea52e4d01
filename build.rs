//! Compiles `proto/` with the pure-Rust `protox` (no `protoc` needed), then generates prost
//! types, tonic clients and servers, and canonical protobuf-JSON serde impls (pbjson).

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["gatewayapi/v1/gateway.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = files.encode_to_vec();
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    tonic_prost_build::configure().out_dir(&out).compile_fds_with_config(files, config)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out)
        .build(&[".gatewayapi.v1"])?;

    // Node-to-node and admin APIs; they refer to the gatewayapi types generated above.
    let mut files =
        protox::compile(["cluster/v1/cluster.proto", "admin/v1/admin.proto"], ["proto"])?;
    let descriptors = files.encode_to_vec();
    files.file.retain(|f| f.package().starts_with("wsgw."));
    let mut config = prost_build::Config::new();
    config.bytes(["."]).extern_path(".gatewayapi.v1", "crate::protocol::pb");
    tonic_prost_build::configure().out_dir(&out).compile_fds_with_config(files, config)?;
    // Canonical protobuf JSON for the admin types: the CLI's `--json` output.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".gatewayapi.v1", "crate::protocol::pb")
        .emit_fields()
        .out_dir(&out)
        .build(&[".wsgw.admin.v1"])?;
    Ok(())
}
