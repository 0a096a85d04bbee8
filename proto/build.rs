//! Generates the knit.v1 code. Uses the `protoc` named by `PROTOC` (e.g.
//! Debian's protobuf-compiler) when set, the vendored one otherwise, so a
//! fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    println!("cargo:rerun-if-changed=proto/knit/v1/mesh.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/knit/v1/mesh.proto"],
        &["proto"],
    )?;
    Ok(())
}
