//! rtc-bench (placeholder)
fn main() {}
