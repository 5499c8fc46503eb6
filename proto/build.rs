//! Compiles the cluster protocol with the pure-Rust `protox` compiler, so no system `protoc`
//! is needed to build Heliograph.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/heliograph/v1/registry.proto",
        "proto/heliograph/v1/raft.proto",
        "proto/heliograph/v1/admin.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
