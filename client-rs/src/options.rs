//! Options for subscriptions ([`SubscribeOptions`], [`StartAt`]) and the generator of
//! message IDs the client fills in when the caller gives none ([`IdGen`]).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtc_proto::v1::{start_position::Position, StartPosition};

/// Where a subscription starts in the logs of the durable topics its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only messages published from now on (the default).
    #[default]
    New,
    /// From the oldest stored message.
    First,
    /// From the newest stored message, then live.
    Last,
    /// From this sequence number (≥ 1).
    Seq(u64),
    /// From the first message stored at or after this time.
    Time(SystemTime),
    /// From the first message stored at most this long ago, by the broker's clock.
    Ago(Duration),
}

impl std::str::FromStr for StartAt {
    type Err = String;

    /// The text forms of `rtc-cli sub --from`: `new`, `first`, `last`, `seq:N`,
    /// `time:RFC3339`, `time:-5m`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = rtc_proto::position::parse_start(s).map_err(|e| e.to_string())?;
        Ok(match parsed.position {
            None | Some(Position::New(_)) => StartAt::New,
            Some(Position::First(_)) => StartAt::First,
            Some(Position::Last(_)) => StartAt::Last,
            Some(Position::Seq(n)) => StartAt::Seq(n),
            Some(Position::TimeMs(ms)) => {
                StartAt::Time(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
            }
            Some(Position::RelativeMs(ms)) => {
                StartAt::Ago(Duration::from_millis(ms.unsigned_abs()))
            }
        })
    }
}

impl StartAt {
    pub(crate) fn to_wire(self) -> Option<StartPosition> {
        let position = match self {
            StartAt::New => return None,
            StartAt::First => Position::First(true),
            StartAt::Last => Position::Last(true),
            StartAt::Seq(n) => Position::Seq(n),
            StartAt::Time(t) => Position::TimeMs(
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            ),
            StartAt::Ago(d) => Position::RelativeMs(-(d.as_millis().min(i64::MAX as u128) as i64)),
        };
        Some(StartPosition {
            position: Some(position),
        })
    }
}

/// Settings for [`crate::Client::subscribe_with`].
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Where to start; [`StartAt::New`] by default. For a durable consumer this applies
    /// only when the consumer is created (default then: [`StartAt::First`]); an existing
    /// one continues from its first unacknowledged message.
    pub start: StartAt,
    /// Join a durable consumer instead of subscribing on your own.
    pub consumer: Option<ConsumerOptions>,
    /// Over `quic://`: receive messages of `datagram = true` topics as QUIC datagrams
    /// (lowest latency; unreliable and unordered). Messages too large for a datagram
    /// still arrive on the stream.
    pub datagrams: bool,
    /// Join a queue group: the subscriptions of the same pattern and group, on any
    /// connection, share its messages and requests, each going to one of them. Live
    /// subscriptions only (start `New`, no consumer).
    pub group: Option<String>,
    /// Join the presence of the room `pattern` names (one topic) as this connection's
    /// user: `info` is the app's JSON about the member; with `events`, the room's
    /// changes arrive on [`crate::Client::presence_events`].
    pub presence: Option<rtc_proto::v1::PresenceJoin>,
    /// The epoch ([`crate::Message::epoch`], [`crate::TopicInfo::epoch`]) a
    /// [`StartAt::Seq`] position belongs to: if the topic was deleted and created again
    /// since, the subscription is refused (`UNRECOVERABLE_POSITION`) rather than served
    /// from the new log's seqs.
    pub epoch: Option<u64>,
}

/// A durable consumer to join: the broker keeps its position and unacknowledged
/// messages, and every connection joining the same name shares its messages.
///
/// ```
/// let opts = rtc_client::ConsumerOptions::new("billing").ack_wait(std::time::Duration::from_secs(5));
/// assert!(opts.explicit_ack);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Consumer name (letters, digits, `-`, `_`).
    pub name: String,
    /// Each message must be acknowledged ([`crate::Subscription::ack`]); otherwise a
    /// delivery settles it. Default: true.
    pub explicit_ack: bool,
    /// Redeliver unacknowledged messages after this long (broker default 30 s).
    pub ack_wait: Option<Duration>,
    /// Most unacknowledged messages delivered at once (broker default 1000).
    pub max_in_flight: Option<u32>,
    /// Deliveries before a message goes to `$dlq.<topic>.<name>` (broker default 10).
    pub max_deliver: Option<u32>,
}

impl ConsumerOptions {
    /// Explicit acks and the broker's defaults.
    pub fn new(name: impl Into<String>) -> Self {
        ConsumerOptions {
            name: name.into(),
            explicit_ack: true,
            ack_wait: None,
            max_in_flight: None,
            max_deliver: None,
        }
    }

    /// Sets the redelivery delay.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = Some(d);
        self
    }

    /// Sets the in-flight cap.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Sets the delivery attempts before dead-lettering.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// A delivery settles the message; no acks.
    pub fn no_ack(mut self) -> Self {
        self.explicit_ack = false;
        self
    }
}

/// Makes message IDs unique across clients and processes: 128 random bits chosen when
/// the client is created, then a counter (`3f2a…9c-17`).
#[derive(Debug)]
pub(crate) struct IdGen {
    prefix: String,
    counter: AtomicU64,
}

impl IdGen {
    pub(crate) fn new() -> Self {
        // std's RandomState is seeded from the OS's random source per instance.
        let random = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        IdGen {
            prefix: format!("{:016x}{:016x}", random() ^ h.finish(), random()),
            counter: AtomicU64::new(1),
        }
    }

    pub(crate) fn next(&self) -> String {
        // Built by hand: `format!` showed in a fast publisher's profile.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut rest = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut id = String::with_capacity(self.prefix.len() + 1 + digits.len() - i);
        id.push_str(&self.prefix);
        id.push('-');
        id.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_generators() {
        let a = IdGen::new();
        let b = IdGen::new();
        let ids: std::collections::HashSet<String> =
            (0..1000).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 2000);
        assert_ne!(a.prefix, b.prefix);
    }

    #[test]
    fn ids_are_the_prefix_and_a_decimal_counter() {
        let g = IdGen::new();
        assert_eq!(g.next(), format!("{}-1", g.prefix));
        g.counter.store(u64::MAX - 1, Ordering::Relaxed);
        assert_eq!(g.next(), format!("{}-{}", g.prefix, u64::MAX - 1));
        g.counter.store(0, Ordering::Relaxed);
        assert_eq!(g.next(), format!("{}-0", g.prefix));
    }

    #[test]
    fn start_positions_parse_and_convert() {
        assert_eq!("first".parse::<StartAt>().unwrap(), StartAt::First);
        assert_eq!("seq:5".parse::<StartAt>().unwrap(), StartAt::Seq(5));
        assert_eq!(
            "time:-5m".parse::<StartAt>().unwrap(),
            StartAt::Ago(Duration::from_secs(300))
        );
        assert!("seq:0".parse::<StartAt>().is_err());
        assert_eq!(StartAt::New.to_wire(), None);
        assert_eq!(
            StartAt::Ago(Duration::from_secs(1))
                .to_wire()
                .unwrap()
                .position,
            Some(Position::RelativeMs(-1000))
        );
    }
}
