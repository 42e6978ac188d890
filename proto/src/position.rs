//! Start positions for replay, in their text form (`rtc-cli sub --from POSITION`):
//!
//! | text | meaning |
//! |---|---|
//! | `new` | live messages only (the default) |
//! | `first` | from the oldest stored message |
//! | `last` | from the newest stored message, then live |
//! | `seq:N` | from sequence number N (N ≥ 1) |
//! | `time:2026-11-21T10:00:00Z` | from the first message stored at or after that RFC 3339 time |
//! | `time:-5m` | the same, relative to the broker's clock (`-90s`, `-1h 30m`, …) |

use std::time::UNIX_EPOCH;

use crate::v1::{start_position::Position, StartPosition};

/// Why a start position could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid start position {input:?}: {reason} (expected new, first, last, seq:N, time:RFC3339 or time:-DURATION)")]
pub struct PositionError {
    input: String,
    reason: String,
}

/// Parses the text form described in the module docs.
pub fn parse_start(input: &str) -> Result<StartPosition, PositionError> {
    let err = |reason: &str| PositionError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let position = match input {
        "new" => Position::New(true),
        "first" => Position::First(true),
        "last" => Position::Last(true),
        _ => match input.split_once(':') {
            Some(("seq", n)) => match n.parse::<u64>() {
                Ok(0) => return Err(err("sequence numbers start at 1")),
                Ok(n) => Position::Seq(n),
                Err(_) => return Err(err("seq: needs a positive integer")),
            },
            Some(("time", t)) if t.starts_with('-') => {
                let d = humantime::parse_duration(&t[1..]).map_err(|e| err(&e.to_string()))?;
                let ms = i64::try_from(d.as_millis()).map_err(|_| err("duration too large"))?;
                Position::RelativeMs(-ms)
            }
            Some(("time", t)) => {
                let when = humantime::parse_rfc3339_weak(t).map_err(|e| err(&e.to_string()))?;
                let ms = when
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| err("time before 1970"))?
                    .as_millis();
                Position::TimeMs(i64::try_from(ms).map_err(|_| err("time too far away"))?)
            }
            _ => return Err(err("unknown form")),
        },
    };
    Ok(StartPosition {
        position: Some(position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        parse_start(s).unwrap().position.unwrap()
    }

    #[test]
    fn forms() {
        assert_eq!(pos("new"), Position::New(true));
        assert_eq!(pos("first"), Position::First(true));
        assert_eq!(pos("last"), Position::Last(true));
        assert_eq!(pos("seq:42"), Position::Seq(42));
        assert_eq!(pos("time:-5m"), Position::RelativeMs(-300_000));
        assert_eq!(pos("time:-1h 30m"), Position::RelativeMs(-5_400_000));
        assert_eq!(pos("time:1970-01-01T00:00:01Z"), Position::TimeMs(1000));
        assert_eq!(
            pos("time:2026-11-21T10:00:00.5Z"),
            Position::TimeMs(1_795_255_200_500)
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "newest",
            "seq:",
            "seq:0",
            "seq:-1",
            "seq:x",
            "time:",
            "time:-",
            "time:yesterday",
            "time:-5 parsecs",
            "x:1",
        ] {
            assert!(parse_start(bad).is_err(), "{bad:?} should be refused");
        }
        let e = parse_start("seq:0").unwrap_err().to_string();
        assert!(e.contains("seq:0") && e.contains("start at 1"), "{e}");
    }
}
