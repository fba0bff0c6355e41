//! Compiles the protos with protox (pure Rust), so no system `protoc` is needed.

/// Packages of the vendored Envoy protos that get Rust code: the ext_authz service and the types
/// its messages hold. The rest of the closure (`validate`, `udpa.annotations`, ...) only defines
/// options.
const ENVOY_PACKAGES: &[&str] =
    &["envoy.service.auth.v3", "envoy.config.core.v3", "envoy.type.v3", "google.rpc", "xds.core.v3"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=sluice");
    println!("cargo:rerun-if-changed=vendor");
    sluice()?;
    envoy()?;
    Ok(())
}

fn sluice() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["sluice/v1/sluice.proto"], ["."])?;
    // Payloads are shared by every stream they are pushed on, not copied per stream.
    tonic_prost_build::configure()
        .bytes(".sluice.v1.SignedBundle.payload")
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}

/// `envoy.service.auth.v3.Authorization` (client and server), from `vendor/` (vendor/README.md).
/// A run of its own: the settings above stay sluice.v1's alone.
fn envoy() -> Result<(), Box<dyn std::error::Error>> {
    let mut fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["vendor"])?;
    // `google.protobuf` stays in the set for prost-build to look its messages up (which derives
    // hold), but maps to `prost-types` (prost-build's default) and gets no code of its own.
    fds.file.retain(|file| file.package() == "google.protobuf" || ENVOY_PACKAGES.contains(&file.package()));
    // A data plane makes one Check call per request it authorizes: small starting buffers
    // (a CheckRequest with typical headers is a few hundred bytes) that grow when needed.
    tonic_prost_build::configure().codec_path("crate::codec::LeanCodec").compile_fds(fds)?;
    Ok(())
}
