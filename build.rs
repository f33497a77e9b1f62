//! Generates the Istio certificate service from proto/ca.proto (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ca.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/ca.proto"], &["proto"])?;
    Ok(())
}
