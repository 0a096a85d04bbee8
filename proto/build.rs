//! Generates the knit.v1 code. Uses the `protoc` named by `PROTOC` (e.g.
//! Debian's protobuf-compiler) when set, the vendored one otherwise, so a
//! fresh machine needs no system protoc.
//!
//! Two passes: `v1` (every message, the clients and servers), and
//! `v1_server` (servers only) whose `Discovery` service sends
//! [`wire::EncodedDiscoveryResponse`](../src/wire.rs), so knitd encodes the
//! part every proxy shares once per config instead of once per proxy.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc: PathBuf = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let proto = "proto/knit/v1/mesh.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let config = || {
        let mut config = prost_build::Config::new();
        config.protoc_executable(&protoc);
        config
    };
    tonic_prost_build::configure().compile_with_config(config(), &[proto], &["proto"])?;

    let server_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?).join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .extern_path(".knit.v1", "crate::v1")
        .extern_path(
            ".knit.v1.DiscoveryResponse",
            "crate::wire::EncodedDiscoveryResponse",
        )
        .compile_with_config(config(), &[proto], &["proto"])?;
    Ok(())
}
