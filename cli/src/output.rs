//! How `rtc-cli sub --json` prints a message: one JSON object per line with `topic`,
//! `payload` (when the payload is valid UTF-8) or `payload_base64` (when it is not),
//! `headers`, `seq`, `epoch` (the incarnation of the topic's log), `timestamp` (RFC 3339),
//! `timestamp_ms`, `msg_id` and `delivery_count`.

use base64::Engine;
use rtc_client::Message;
use serde_json::{json, Map, Value};

/// The JSON line for one message.
pub fn json(m: &Message) -> Value {
    let mut obj = Map::new();
    obj.insert("topic".into(), json!(m.topic.as_str()));
    match std::str::from_utf8(&m.payload) {
        Ok(text) => obj.insert("payload".into(), json!(text)),
        Err(_) => obj.insert(
            "payload_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
        ),
    };
    obj.insert("headers".into(), json!(m.headers));
    obj.insert("seq".into(), json!(m.seq));
    obj.insert("epoch".into(), json!(m.epoch));
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.timestamp_ms.max(0) as u64);
    obj.insert(
        "timestamp".into(),
        json!(humantime::format_rfc3339_millis(time).to_string()),
    );
    obj.insert("timestamp_ms".into(), json!(m.timestamp_ms));
    obj.insert("msg_id".into(), json!(m.msg_id));
    obj.insert("delivery_count".into(), json!(m.delivery_count));
    if !m.reply_to.is_empty() {
        // A request (`rtc-cli reply` answers these).
        obj.insert("reply_to".into(), json!(m.reply_to));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn msg(payload: &'static [u8]) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from_static(payload),
            headers: BTreeMap::from([("k".to_string(), "v".to_string())]),
            seq: 3,
            timestamp_ms: 5,
            msg_id: "id".into(),
            delivery_count: 1,
            reply_to: String::new(),
            epoch: 2,
        }
    }

    #[test]
    fn utf8_payload_is_text_and_binary_is_base64() {
        let v = json(&msg(b"hi"));
        assert_eq!(v["payload"], "hi");
        assert!(v.get("payload_base64").is_none());
        assert_eq!(v["headers"]["k"], "v");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.005Z");
        assert!(v.get("reply_to").is_none(), "only requests have one");
        let request = Message {
            reply_to: "r1".into(),
            ..msg(b"?")
        };
        assert_eq!(json(&request)["reply_to"], "r1");
        let v = json(&msg(&[0xff, 0x00]));
        assert_eq!(v["payload_base64"], "/wA=");
        assert!(v.get("payload").is_none());
    }
}
