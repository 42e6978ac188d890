//! The names of everything the cluster keeps in Redis, in one place.
//!
//! Every key and channel starts with the configured prefix. A topic's keys carry the
//! topic in a hash tag (`{…}`), so that on Redis Cluster they share one slot and the
//! append script may touch them all:
//!
//! | name | type | holds |
//! |---|---|---|
//! | `P:topics` | hash | topic name → `E`/`R` (created explicitly, or by the rules) and its `TopicSettings` (protobuf) |
//! | `P:{T}:meta` | hash | `epoch`, `seq` (last assigned), `ts` (last timestamp), `bytes` (stored) |
//! | `P:{T}:log` | stream | one entry per message, ID `<seq>-0`, fields `t` (timestamp) and `b` (the `Message` without seq, timestamp and epoch) |
//! | `P:{T}:id:<msg_id>` | string, with a TTL of the dedup window | `<epoch>:<seq>` of the message stored with that ID |
//! | `P:{T}:c:<name>` | hash | durable consumer `name`'s counters (`redelivered`, `dead_lettered`); its position and pending entries are the stream's consumer group `name` |
//! | `P:{T}:live` | channel | every message of `T`, durable ones from the append script, in seq order |
//! | `P:ctl` | channel | a topic name whose settings changed (every node listens) |
//! | `P:{R}:who` | hash, and a channel | room `R`'s members by node: node id → `PresenceInfo` (protobuf) of that node's members; the channel carries `<node>:<version>:<the same>` on each change |
//! | `P:reply:<node>` | channel | replies forwarded to `node`, whose requester waits (`Reply`, protobuf) |
//! | `P:nodes` | hash | node id → `<ms>:<connections>`, written every third of `presence_ttl` |

/// The names for one cluster prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (validated by the config: no glob characters).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The registry of topics and their settings.
    pub fn topics(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// Topic `topic`'s counters and epoch.
    pub fn meta(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:meta", self.prefix)
    }

    /// Topic `topic`'s stream of messages.
    pub fn log(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:log", self.prefix)
    }

    /// The dedup entry of `msg_id` in `topic`.
    pub fn dedup(&self, topic: &str, msg_id: &str) -> String {
        format!("{}:{{{topic}}}:id:{msg_id}", self.prefix)
    }

    /// A glob for every dedup entry of `topic` (for deleting the topic).
    pub fn dedup_glob(&self, topic: &str) -> String {
        format!("{}:{{{}}}:id:*", self.prefix, escape_glob(topic))
    }

    /// Durable consumer `name`'s counters.
    pub fn consumer(&self, topic: &str, name: &str) -> String {
        format!("{}:{{{topic}}}:c:{name}", self.prefix)
    }

    /// The live channel of `topic`.
    pub fn live(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:live", self.prefix)
    }

    /// Room `room`'s members by node (a hash), and its changes (a channel).
    pub fn who(&self, room: &str) -> String {
        format!("{}:{{{room}}}:who", self.prefix)
    }

    /// The room a presence channel belongs to.
    pub fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:who")
    }

    /// Where replies to `node`'s requests are forwarded.
    pub fn replies(&self, node: &str) -> String {
        format!("{}:reply:{node}", self.prefix)
    }

    /// The nodes and when each last said it was alive.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The channel that tells every node a topic's settings changed.
    pub fn ctl(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// What to subscribe to in Redis for a subscription with `pattern` (validated): its
    /// live channel when it has no wildcard, else a glob over live channels (`*` and
    /// `>` both become `*`, which may match more than the pattern; the router matches
    /// exactly).
    pub fn interest(&self, pattern: &str) -> Interest {
        let wild = pattern.split('.').any(|t| t == "*" || t == ">");
        if !wild {
            return Interest::Channel(self.live(pattern));
        }
        let glob: Vec<String> = pattern
            .split('.')
            .map(|t| match t {
                "*" | ">" => "*".to_string(),
                t => escape_glob(t),
            })
            .collect();
        Interest::Glob(format!("{}:{{{}}}:live", self.prefix, glob.join(".")))
    }

    /// The topic a live channel belongs to.
    pub fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:live")
    }
}

/// A Redis subscription: a channel, or a glob of channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// `SUBSCRIBE`.
    Channel(String),
    /// `PSUBSCRIBE`.
    Glob(String),
}

/// `s` with Redis glob's special characters escaped.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_becomes_a_channel_or_an_escaped_glob() {
        let k = Keys::new("rtc");
        assert_eq!(
            k.interest("orders.eu"),
            Interest::Channel("rtc:{orders.eu}:live".into())
        );
        assert_eq!(
            k.interest("a?b.*.c[1].>"),
            Interest::Glob("rtc:{a\\?b.*.c\\[1\\].*}:live".into())
        );
        assert_eq!(k.topic_of("rtc:{orders.eu}:live"), Some("orders.eu"));
        assert_eq!(k.topic_of("rtc:ctl"), None);
        assert_eq!(k.topic_of("other:{orders.eu}:live"), None);
    }
}
