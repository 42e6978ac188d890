//! Compiles `rtc.proto` with protox (pure Rust, no system `protoc`) and generates the Rust
//! types with prost-build. `bytes` fields become `bytes::Bytes` so payloads are shared, not
//! copied, when a frame is decoded.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=rtc.proto");
    let fds = protox::compile(["rtc.proto"], ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
