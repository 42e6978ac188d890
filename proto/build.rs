//! Compiles `rtc.proto` with protox (pure Rust, no system `protoc`) and generates the Rust
//! types with prost-build. `bytes` fields become `bytes::Bytes` so payloads are shared, not
//! copied, when a frame is decoded.
//!
//! With the `json` feature the types also derive serde's traits, for the JSON mapping of
//! frames (`rtc.v1.json`, see `src/json.rs` and docs/protocol.md): field names as in the
//! proto, absent fields at their defaults, payloads as text or base64, error codes by
//! name. A frame itself is mapped by hand in `src/json.rs`: one key, its operation.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=rtc.proto");
    let fds = protox::compile(["rtc.proto"], ["."])?;
    let json = |attr: &str| format!("#[cfg_attr(feature = \"json\", {attr})]");
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .message_attribute(
            ".",
            json("derive(serde::Serialize, serde::Deserialize), serde(default)"),
        )
        .enum_attribute(
            ".",
            json(
                "derive(serde::Serialize, serde::Deserialize), serde(rename_all = \"snake_case\")",
            ),
        )
        .field_attribute(
            "rtc.v1.Publish.payload",
            json("serde(with = \"crate::json::payload\")"),
        )
        .field_attribute(
            "rtc.v1.Message.payload",
            json("serde(with = \"crate::json::payload\")"),
        )
        .field_attribute(
            "rtc.v1.Request.payload",
            json("serde(with = \"crate::json::payload\")"),
        )
        .field_attribute(
            "rtc.v1.Response.payload",
            json("serde(with = \"crate::json::payload\")"),
        )
        .field_attribute(
            "rtc.v1.Reply.payload",
            json("serde(with = \"crate::json::payload\")"),
        )
        .field_attribute(
            "rtc.v1.Error.code",
            json("serde(with = \"crate::json::error_code\")"),
        )
        .compile_fds(fds)?;
    Ok(())
}
