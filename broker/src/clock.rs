//! The broker's clock: wall-clock milliseconds since the Unix epoch, the timestamp of every
//! stored message and the reference for retention by age, dedup windows and replays from
//! a time. One function, so that every layer reads the same clock and none imports
//! another to get it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
