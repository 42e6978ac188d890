//! Frames as JSON: the mapping of the WebSocket subprotocol `rtc.v1.json`, for clients
//! with no protobuf library (a browser page). docs/protocol.md gives it exactly; in short:
//!
//! - a frame is an object with one key, the operation's name in snake_case, whose value
//!   is the operation: `{"publish": {"req_id": 1, "topic": "chat.x", "payload": "hi"}}`;
//! - fields have their rtc.proto names; an absent field has its default (0, "", false,
//!   empty), as in protobuf; unknown fields are ignored;
//! - a payload that is valid UTF-8 is a JSON string; any other is `{"base64": "…"}`
//!   (standard base64 with padding); a client may send either;
//! - `Error.code` is the code's name without `ERROR_CODE_` (`"SLOW_CONSUMER"`); other
//!   enums are their numbers; a start position is `{"position": {"seq": 5}}` (one key,
//!   as the proto's `oneof`); maps are objects; 64-bit integers are JSON numbers.
//!
//! A frame whose operation is unknown decodes with no operation, as in protobuf, and the
//! broker answers `UNSUPPORTED`.

use base64::Engine as _;

use crate::v1::{frame::Op, Frame};

/// `frame` as one line of JSON: `{"OPERATION": {...}}`, or `{}` for a frame with none.
pub fn to_json(frame: &Frame) -> String {
    let json = match &frame.op {
        Some(op) => serde_json::to_string(op),
        None => Ok("{}".to_string()),
    };
    json.expect("operations have string keys and finite numbers")
}

/// A frame from JSON: an object with one key, the operation. An operation this version
/// does not know gives a frame with none; a known one with a bad field is an error.
pub fn from_json(text: &str) -> Result<Frame, serde_json::Error> {
    use serde::de::Error as _;
    let value: serde_json::Value = serde_json::from_str(text)?;
    let key = match value.as_object() {
        Some(map) if map.is_empty() => return Ok(Frame { op: None }),
        Some(map) if map.len() == 1 => map.keys().next().cloned().unwrap_or_default(),
        _ => {
            return Err(serde_json::Error::custom(
                "a frame is an object with one key, its operation",
            ))
        }
    };
    match serde_json::from_value::<Op>(value) {
        Ok(op) => Ok(Frame { op: Some(op) }),
        // Every field of an operation has a default, so a known one reads from `{}`.
        Err(_) if serde_json::from_value::<Op>(serde_json::json!({ key: {} })).is_err() => {
            Ok(Frame { op: None })
        }
        Err(e) => Err(e),
    }
}

/// Payloads: text when they are UTF-8, `{"base64": "…"}` otherwise.
pub(crate) mod payload {
    use super::*;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(payload: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(payload) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(payload),
                )?;
                map.end()
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Binary { base64: String },
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Text(text) => Ok(Bytes::from(text)),
            Wire::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Bytes::from)
                .map_err(|e| serde::de::Error::custom(format!("payload base64: {e}"))),
        }
    }
}

/// `Error.code` by name (`"SLOW_CONSUMER"`); a number is read too.
pub(crate) mod error_code {
    use crate::v1::ErrorCode;
    use serde::{Deserialize, Deserializer, Serializer};

    const PREFIX: &str = "ERROR_CODE_";

    pub fn serialize<S: Serializer>(code: &i32, s: S) -> Result<S::Ok, S::Error> {
        match ErrorCode::try_from(*code) {
            Ok(c) => s.serialize_str(c.as_str_name().trim_start_matches(PREFIX)),
            Err(_) => s.serialize_i32(*code),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Name(String),
        Number(i32),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Number(n) => Ok(n),
            Wire::Name(name) => ErrorCode::from_str_name(&format!("{PREFIX}{name}"))
                .map(|c| c as i32)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {name:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, frame::Op, start_position::Position};
    use bytes::Bytes;

    #[test]
    fn the_documented_shapes() {
        let f = Frame::from_op(Op::Publish(v1::Publish {
            req_id: 1,
            topic: "chat.x".into(),
            payload: Bytes::from_static(b"hi"),
            ..Default::default()
        }));
        let json: serde_json::Value = serde_json::from_str(&to_json(&f)).unwrap();
        assert_eq!(json["publish"]["payload"], "hi");
        assert_eq!(json["publish"]["req_id"], 1);

        let binary = Frame::from_op(Op::Publish(v1::Publish {
            payload: Bytes::from_static(&[0, 1, 255]),
            ..Default::default()
        }));
        let json: serde_json::Value = serde_json::from_str(&to_json(&binary)).unwrap();
        assert_eq!(
            json["publish"]["payload"],
            serde_json::json!({"base64": "AAH/"})
        );
        assert_eq!(from_json(&to_json(&binary)).unwrap(), binary);

        let e = Frame::error(3, v1::ErrorCode::SlowConsumer, "dropped");
        let json: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(json["error"]["code"], "SLOW_CONSUMER");
        assert_eq!(from_json(&to_json(&e)).unwrap(), e);

        let s = from_json(
            r#"{"subscribe": {"sub_id": 2, "pattern": "a.>", "start": {"position": {"seq": 5}}}}"#,
        )
        .unwrap();
        let Some(Op::Subscribe(s)) = s.op else {
            panic!("{s:?}")
        };
        assert_eq!(s.start.and_then(|p| p.position), Some(Position::Seq(5)));
        assert_eq!((s.sub_id, s.req_id), (2, 0), "absent fields are defaults");
    }

    #[test]
    fn unknown_operations_decode_with_none_and_bad_json_is_an_error() {
        assert_eq!(from_json(r#"{"teleport": {}}"#).unwrap().op, None);
        assert!(from_json("not json").is_err());
        assert!(
            from_json(r#"{"ping": {}, "pong": {}}"#).is_err(),
            "two operations"
        );
        assert!(from_json(r#"{"publish": {"req_id": "one"}}"#).is_err());
        assert_eq!(from_json("{}").unwrap().op, None);
        assert!(from_json(r#"{"publish": {"payload": {"base64": "!!"}}}"#).is_err());
        assert!(from_json(r#"{"error": {"code": "NO_SUCH_CODE"}}"#).is_err());
    }
}
