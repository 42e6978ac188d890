//! Messages as the application sees them: [`Message`] (received) and [`PublishMessage`]
//! (to send, with optional headers and message ID).

use std::collections::BTreeMap;

use bytes::Bytes;
use rtc_proto::v1;

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// Headers, as published.
    pub headers: BTreeMap<String, String>,
    /// Position in the topic's log; 0 for ephemeral topics.
    pub seq: u64,
    /// Broker time at which it was accepted (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// The publisher's message ID ("" when none).
    pub msg_id: String,
    /// Delivery attempt for this consumer, from 1.
    pub delivery_count: u32,
}

impl From<v1::Message> for Message {
    fn from(m: v1::Message) -> Self {
        Message {
            topic: m.topic,
            payload: m.payload,
            headers: m.headers,
            seq: m.seq,
            timestamp_ms: m.timestamp_ms,
            msg_id: m.msg_id,
            delivery_count: m.delivery_count,
        }
    }
}

/// A message to publish, built with [`PublishMessage::new`] and the setters.
///
/// ```
/// let msg = rtc_client::PublishMessage::new("orders.created", "{\"id\":1}")
///     .header("content-type", "application/json")
///     .msg_id("order-1");
/// assert_eq!(msg.topic, "orders.created");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishMessage {
    /// Topic name (no wildcards).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Headers (string keys and values).
    pub headers: BTreeMap<String, String>,
    /// Message ID for deduplication on durable topics ("" for none).
    pub msg_id: String,
}

impl PublishMessage {
    /// A message with no headers and no ID.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        PublishMessage {
            topic: topic.into(),
            payload: payload.into(),
            headers: BTreeMap::new(),
            msg_id: String::new(),
        }
    }

    /// Adds (or replaces) one header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Sets the message ID used for deduplication.
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = id.into();
        self
    }

    pub(crate) fn into_publish(self, req_id: u64) -> v1::Publish {
        v1::Publish {
            req_id,
            topic: self.topic,
            payload: self.payload,
            headers: self.headers,
            msg_id: self.msg_id,
        }
    }

    pub(crate) fn into_frame(self, req_id: u64) -> rtc_proto::Frame {
        rtc_proto::Frame::from_op(rtc_proto::Op::Publish(self.into_publish(req_id)))
    }
}

/// The broker's acknowledgement of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Sequence number in the topic's log; 0 for ephemeral topics.
    pub seq: u64,
    /// The message ID had been seen within the dedup window; nothing new was stored.
    pub duplicate: bool,
}
