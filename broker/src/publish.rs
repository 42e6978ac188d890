//! The checks every publish passes, whichever way it came (a session's `Publish` frame,
//! an HTTP request), and the message it becomes. One place, so that a rule (a limit, a
//! header rule, the permission check) cannot differ between transports.
//!
//! A publish is checked in two steps: its topic ([`check_topic`]: valid, permitted,
//! and the settings in force, which a session caches per topic) and then its contents
//! ([`message`]: payload, message ID and headers within the limits, and a `Deliver`
//! built from it within the announced frame size).

use bytes::Bytes;
use rtc_proto::codec::deliver_frame_len;
use rtc_proto::topic::validate_publish_topic;
use rtc_proto::v1::{self, TopicSettings};
use std::collections::BTreeMap;

use crate::auth::Identity;
use crate::bus::Bus;
use crate::config::Config;
use crate::engine::{Append, Log};
use crate::refusal::Refusal;
use crate::settings::Live;

/// Bytes the broker may add to a message when it stores it: the seq field (at most 11)
/// and the epoch field (a `u32` topic id in the local engine, at most 6; 11 allowed).
const STORED_OVERHEAD: usize = 22;

/// Whether `identity` may publish to `topic`, and the topic's settings if so.
pub fn check_topic(
    log: &dyn Log,
    identity: &Identity,
    topic: &str,
) -> Result<TopicSettings, Refusal> {
    check_permission(identity, topic)?;
    Ok(log.settings(topic))
}

/// Whether `topic` is one a client may publish to (or send a request to), and
/// `identity` may.
pub fn check_permission(identity: &Identity, topic: &str) -> Result<(), Refusal> {
    if let Err(e) = validate_publish_topic(topic) {
        return Err(Refusal::InvalidTopic(format!("{topic:?}: {e}")));
    }
    if !identity.can_publish(topic) {
        let msg = format!("user {:?} may not publish to {topic:?}", identity.name());
        return Err(Refusal::PermissionDenied(msg));
    }
    Ok(())
}

/// What a publish carries besides its topic.
#[derive(Debug)]
pub struct Contents {
    /// The payload.
    pub payload: Bytes,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its message ID; empty for none.
    pub msg_id: String,
}

/// The message a publish to `topic` (already checked) becomes, received at `ts_ms`, and
/// its encoded length; or why it is refused.
pub fn message(
    config: &Config,
    live: &Live,
    topic: String,
    contents: Contents,
    ts_ms: i64,
) -> Result<(v1::Message, usize), Refusal> {
    let Contents {
        payload,
        headers,
        msg_id,
    } = contents;
    let max_payload = live.max_payload();
    if payload.len() > max_payload {
        let msg = format!(
            "payload of {} bytes; the limit is {max_payload}",
            payload.len()
        );
        return Err(Refusal::PayloadTooLarge(msg));
    }
    let max_msg_id = live.max_msg_id();
    if msg_id.len() > max_msg_id {
        let msg = format!(
            "msg_id of {} bytes; the limit is {max_msg_id}",
            msg_id.len()
        );
        return Err(Refusal::InvalidRequest(msg));
    }
    rtc_proto::headers::validate_headers(&headers).map_err(Refusal::InvalidRequest)?;
    let message = v1::Message {
        topic,
        payload,
        headers,
        seq: 0,
        timestamp_ms: ts_ms,
        msg_id,
        delivery_count: 1,
        reply_to: String::new(),
        epoch: 0,
    };
    // The Deliver built from this publish must fit the frame limit the broker announces.
    let message_len = prost::Message::encoded_len(&message);
    let len = deliver_frame_len(u64::MAX, message_len + STORED_OVERHEAD);
    let max = config.max_frame_size;
    if len > max {
        let msg = format!("message would be a {len}-byte Deliver frame; the limit is {max}");
        return Err(Refusal::PayloadTooLarge(msg));
    }
    Ok((message, message_len))
}

/// Hands an ephemeral `message` (of `len` bytes encoded) to the other nodes, if there
/// are any; the encoded message, for this node's own fan-out.
pub fn relay(bus: &dyn Bus, message: &v1::Message, len: usize, datagram: bool) -> Option<Bytes> {
    bus.relays().then(|| {
        let encoded = rtc_proto::codec::encode_message_sized(message, len);
        bus.relay(&message.topic, datagram, encoded.clone());
        encoded
    })
}

/// The append that stores `message` (checked by [`message`]) on behalf of `origin`.
pub fn append<O>(message: v1::Message, origin: O) -> Append<O> {
    let v1::Message {
        topic,
        payload,
        headers,
        msg_id,
        // The engine assigns the seq and the timestamp.
        seq: _,
        timestamp_ms: _,
        delivery_count: _,
        // Set only on requests, which are never stored.
        reply_to: _,
        // The engine's.
        epoch: _,
    } = message;
    Append {
        topic,
        payload,
        headers,
        msg_id,
        origin,
    }
}
