//! Messages as the application sees them: [`Message`] (received) and [`PublishMessage`]
//! (to send, with optional headers and message ID).

use std::collections::BTreeMap;

use bytes::Bytes;
use rtc_proto::hot::Utf8Bytes;
use rtc_proto::v1;

/// A topic name as received: shared bytes of the frame it came in (no allocation per
/// message), always valid UTF-8. Reads like a `&str` (`Deref`, `Display`, comparisons
/// with `str` and `String`).
///
/// ```
/// let t = rtc_client::Topic::from("orders.created");
/// assert_eq!(t, "orders.created");
/// assert!(t.starts_with("orders."));
/// assert_eq!(t.to_string(), "orders.created");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Topic(Utf8Bytes);

impl Topic {
    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::hash::Hash for Topic {
    // As `str` hashes, so that `Borrow<str>` lookups agree.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Topic {
    fn from(s: String) -> Topic {
        Topic(Utf8Bytes::from(s))
    }
}

impl From<&String> for Topic {
    fn from(s: &String) -> Topic {
        Topic::from(s.as_str())
    }
}

impl From<&str> for Topic {
    fn from(s: &str) -> Topic {
        Topic(Utf8Bytes::from(s))
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.as_str().to_owned()
    }
}

impl PartialEq<str> for Topic {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Topic {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Topic {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Topic> for &str {
    fn eq(&self, other: &Topic) -> bool {
        *self == other.as_str()
    }
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Topic,
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
    /// Set when the message is a request: answer it with [`crate::Client::reply`].
    pub reply_to: String,
    /// The incarnation of the topic's log (0 for ephemeral topics): a topic deleted and
    /// created again starts again at seq 1 with another epoch.
    pub epoch: u64,
}

impl From<v1::Message> for Message {
    fn from(mut m: v1::Message) -> Self {
        let topic = Topic::from(std::mem::take(&mut m.topic));
        Message::with_topic(topic, m)
    }
}

impl Message {
    /// The message a delivery decoded by the fast path carries.
    #[inline]
    pub(crate) fn from_delivery(d: rtc_proto::hot::Delivery) -> Message {
        Message::with_topic(Topic(d.topic), d.message)
    }

    /// `m`'s fields, with `topic` in place of its own.
    #[inline]
    fn with_topic(topic: Topic, m: v1::Message) -> Message {
        let v1::Message {
            topic: _,
            payload,
            headers,
            seq,
            timestamp_ms,
            msg_id,
            delivery_count,
            reply_to,
            epoch,
        } = m;
        Message {
            topic,
            payload,
            headers,
            seq,
            timestamp_ms,
            msg_id,
            delivery_count,
            reply_to,
            epoch,
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
///
/// A publisher sending many messages to one topic can build its [`Topic`] once and clone
/// it (a reference count, no allocation per message):
///
/// ```
/// let topic = rtc_client::Topic::from("sensors.temperature");
/// for reading in ["20.5", "20.6"] {
///     let msg = rtc_client::PublishMessage::new(topic.clone(), reading);
///     assert_eq!(msg.topic, topic);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishMessage {
    /// Topic name (no wildcards).
    pub topic: Topic,
    /// The payload.
    pub payload: Bytes,
    /// Headers (string keys and values).
    pub headers: BTreeMap<String, String>,
    /// Message ID for deduplication on durable topics ("" for none).
    pub msg_id: String,
}

impl PublishMessage {
    /// A message with no headers and no ID.
    pub fn new(topic: impl Into<Topic>, payload: impl Into<Bytes>) -> Self {
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
            topic: self.topic.into(),
            payload: self.payload,
            headers: self.headers,
            msg_id: self.msg_id,
        }
    }

    /// Its fields, borrowed, as a `Publish` with `req_id`.
    pub(crate) fn as_publish(&self, req_id: u64) -> rtc_proto::publish::PublishRef<'_> {
        rtc_proto::publish::PublishRef {
            req_id,
            topic: &self.topic,
            payload: &self.payload,
            headers: &self.headers,
            msg_id: &self.msg_id,
        }
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::Topic;

    #[test]
    fn topics_hash_and_order_as_their_strings() {
        // `Borrow<str>` lookups need the same hash and order as `str`.
        let topics: HashSet<Topic> = ["a.b", "ü.x"].into_iter().map(Topic::from).collect();
        assert!(topics.contains("a.b") && topics.contains("ü.x"));
        assert!(!topics.contains("a"));
        let ordered: BTreeSet<Topic> = ["b", "a.c", "a"].into_iter().map(Topic::from).collect();
        let names: Vec<&str> = ordered.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["a", "a.c", "b"]);
        assert!(ordered.contains("a.c"));
        assert_eq!(Topic::from(String::from("x")), Topic::from("x"));
        assert_eq!(String::from(Topic::from("x")), "x");
    }
}
