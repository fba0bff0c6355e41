//! Compiles the protos with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=sluice");
    let fds = protox::compile(["sluice/v1/sluice.proto"], ["."])?;
    // Payloads are shared by every stream they are pushed on, not copied per stream.
    tonic_prost_build::configure()
        .bytes(".sluice.v1.SignedBundle.payload")
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
