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
    Ok(())
}
