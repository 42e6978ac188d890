//! Topic administration from the client: create or re-configure a topic, describe one,
//! list them all.

use std::time::Duration;

use rtc_proto::v1::{self, frame::Op, StorageClass};
use rtc_proto::Frame;

use crate::client::Client;
use crate::error::Error;
use crate::requests::unexpected;

/// Settings for [`Client::create_topic`]. `Default` is a durable topic with no retention
/// limit and the broker's default dedup window (2 minutes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Live fan-out only, nothing stored.
    pub ephemeral: bool,
    /// Remove messages older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many messages.
    pub max_msgs: Option<u64>,
    /// Keep at most this many bytes of messages.
    pub max_bytes: Option<u64>,
    /// Dedup window for message IDs.
    pub dedup_window: Option<Duration>,
    /// Ephemeral topics: deliver as QUIC datagrams to subscribers that ask for them.
    pub datagram: bool,
}

/// A topic's settings and what its log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Its settings (as the broker normalized them).
    pub config: TopicConfig,
    /// Oldest stored sequence number (0 when empty).
    pub first_seq: u64,
    /// Newest sequence number assigned (0 before the first message).
    pub last_seq: u64,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored (encoded messages).
    pub bytes: u64,
    /// The incarnation of its log (0 for an ephemeral topic): deleting the topic and
    /// creating it again gives another.
    pub epoch: u64,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

fn opt_ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn opt(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

impl TopicConfig {
    fn to_wire(&self) -> v1::TopicSettings {
        v1::TopicSettings {
            storage: if self.ephemeral {
                StorageClass::Ephemeral
            } else {
                StorageClass::Durable
            } as i32,
            max_age_ms: ms(self.max_age),
            max_msgs: self.max_msgs.unwrap_or(0),
            max_bytes: self.max_bytes.unwrap_or(0),
            dedup_window_ms: ms(self.dedup_window),
            datagram: self.datagram,
        }
    }

    fn from_wire(s: v1::TopicSettings) -> Self {
        TopicConfig {
            ephemeral: s.storage == StorageClass::Ephemeral as i32,
            max_age: opt_ms(s.max_age_ms),
            max_msgs: opt(s.max_msgs),
            max_bytes: opt(s.max_bytes),
            dedup_window: opt_ms(s.dedup_window_ms),
            datagram: s.datagram,
        }
    }
}

impl From<v1::TopicInfo> for TopicInfo {
    fn from(t: v1::TopicInfo) -> Self {
        let v1::TopicInfo {
            req_id: _,
            name,
            settings,
            first_seq,
            last_seq,
            messages,
            bytes,
            epoch,
        } = t;
        TopicInfo {
            name,
            config: TopicConfig::from_wire(settings.unwrap_or_default()),
            first_seq,
            last_seq,
            messages,
            bytes,
            epoch,
        }
    }
}

/// A durable consumer's position and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its topic.
    pub topic: String,
    /// Its name.
    pub name: String,
    /// Every seq at or below it is settled (acknowledged or dead-lettered).
    pub ack_floor: u64,
    /// Next seq to deliver for the first time.
    pub next_seq: u64,
    /// Delivered and not yet acknowledged.
    pub pending: u64,
    /// Redeliveries made.
    pub redelivered: u64,
    /// Messages moved to the dead-letter topic.
    pub dead_lettered: u64,
    /// Connections sharing it now.
    pub members: u32,
    /// Where its dead letters go.
    pub dead_letter_topic: String,
}

impl From<v1::ConsumerInfo> for ConsumerInfo {
    fn from(c: v1::ConsumerInfo) -> Self {
        ConsumerInfo {
            topic: c.topic,
            name: c.name,
            ack_floor: c.ack_floor,
            next_seq: c.next_seq,
            pending: c.pending,
            redelivered: c.redelivered,
            dead_lettered: c.dead_lettered,
            members: c.members,
            dead_letter_topic: c.dead_letter_topic,
        }
    }
}

impl Client {
    /// Describes durable consumer `name` on `topic`; `NOT_FOUND` if there is none.
    pub async fn consumer_info(&self, topic: &str, name: &str) -> Result<ConsumerInfo, Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::ConsumerInfoRequest(v1::ConsumerInfoRequest {
                    req_id,
                    topic: topic.to_string(),
                    name: name.to_string(),
                }))
            })
            .await?;
        match reply {
            Op::ConsumerInfo(c) => Ok(c.into()),
            other => Err(unexpected("ConsumerInfo", other)),
        }
    }

    /// Every durable consumer of `topic`, sorted by name.
    pub async fn list_consumers(&self, topic: &str) -> Result<Vec<ConsumerInfo>, Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::ConsumerListRequest(v1::ConsumerListRequest {
                    req_id,
                    topic: topic.to_string(),
                }))
            })
            .await?;
        match reply {
            Op::ConsumerList(l) => Ok(l.consumers.into_iter().map(Into::into).collect()),
            other => Err(unexpected("ConsumerList", other)),
        }
    }

    /// Creates a topic, or changes the retention and dedup settings of an existing one.
    /// A durable topic cannot become ephemeral (`CONFLICT`).
    pub async fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<TopicInfo, Error> {
        let settings = config.to_wire();
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::TopicCreate(v1::TopicCreate {
                    req_id,
                    name: name.to_string(),
                    settings: Some(settings),
                }))
            })
            .await?;
        match reply {
            Op::TopicInfo(t) => Ok(t.into()),
            other => Err(unexpected("TopicInfo", other)),
        }
    }

    /// Deletes a topic with its stored messages, dedup entries and durable consumers
    /// (needs an admin identity). Its subscribers are told (`TOPIC_DELETED`); the name
    /// can be used again, as a new log from seq 1 with another epoch.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::TopicDelete(v1::TopicDelete {
                    req_id,
                    name: name.to_string(),
                }))
            })
            .await?;
        match reply {
            Op::Confirm(_) => Ok(()),
            other => Err(unexpected("Confirm", other)),
        }
    }

    /// Removes a topic's stored messages but the newest `keep` (needs an admin
    /// identity). Seqs are not reused; the answer is the topic as it is after.
    pub async fn purge_topic(&self, name: &str, keep: u64) -> Result<TopicInfo, Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::TopicPurge(v1::TopicPurge {
                    req_id,
                    name: name.to_string(),
                    keep,
                }))
            })
            .await?;
        match reply {
            Op::TopicInfo(t) => Ok(t.into()),
            other => Err(unexpected("TopicInfo", other)),
        }
    }

    /// Deletes durable consumer `name` on `topic` and its state (needs an admin
    /// identity); its members' subscriptions end.
    pub async fn delete_consumer(&self, topic: &str, name: &str) -> Result<(), Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::ConsumerDelete(v1::ConsumerDelete {
                    req_id,
                    topic: topic.to_string(),
                    name: name.to_string(),
                }))
            })
            .await?;
        match reply {
            Op::Confirm(_) => Ok(()),
            other => Err(unexpected("Confirm", other)),
        }
    }

    /// Describes one topic; `NOT_FOUND` if the broker has never seen it.
    pub async fn topic_info(&self, name: &str) -> Result<TopicInfo, Error> {
        let reply = self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::TopicInfoRequest(v1::TopicInfoRequest {
                    req_id,
                    name: name.to_string(),
                }))
            })
            .await?;
        match reply {
            Op::TopicInfo(t) => Ok(t.into()),
            other => Err(unexpected("TopicInfo", other)),
        }
    }

    /// Every topic the broker knows, sorted by name, and whether the list was cut short
    /// to fit in one frame.
    pub async fn list_topics(&self) -> Result<(Vec<TopicInfo>, bool), Error> {
        let reply = self
            .inner
            .request(|req_id| Frame::from_op(Op::TopicListRequest(v1::TopicListRequest { req_id })))
            .await?;
        match reply {
            Op::TopicList(l) => Ok((l.topics.into_iter().map(Into::into).collect(), l.truncated)),
            other => Err(unexpected("TopicList", other)),
        }
    }
}
