//! The broker's metrics, for Prometheus at `GET /metrics` (the gateway serves
//! [`Metrics::render`]). One registry, names prefixed `rtc_`, text exposition format.
//!
//! Label sets are bounded: a transport (`tcp`, `tls`, `quic`, `ws`, `sse`, `poll`, or
//! what an embedding program's listener calls itself), an auth-failure reason from a
//! fixed list; never a topic or anything else a client invents.
//!
//! The hot path stays cheap: a session counts its messages in plain integers
//! ([`Tally`]) and adds them to the shared counters once per read (one atomic add per
//! counter per read, not per message); fan-out after a commit adds once per pass.
//! Process figures (resident memory, open descriptors) are read from `/proc` when
//! scraped.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A connection's transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transport {
    pub transport: String,
}

/// Why authentication or authorization failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token where one is required.
    MissingToken,
    /// A token that is not valid (unknown, bad signature, expired, not yet valid).
    InvalidToken,
    /// A valid identity without the permission for the topic.
    PermissionDenied,
}

/// A durable consumer's series: its topic and name, or both empty for the sum of the
/// consumers on topics no config rule names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub topic: String,
    pub consumer: String,
}

/// One durable consumer's figures, for [`Metrics::set_consumers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerFigures {
    pub topic: String,
    pub name: String,
    pub pending: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// Counts a session has not added to the shared counters yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

/// Every metric of one broker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_open: Family<Transport, Gauge>,
    connections_accepted: Family<Transport, Counter>,
    messages_in: Counter,
    bytes_in: Counter,
    messages_out: Counter,
    bytes_out: Counter,
    dropped: Counter,
    auth_failures: Family<Reason, Counter>,
    requests: Counter,
    requests_unanswered: Family<Reason, Counter>,
    resident_memory: Gauge,
    open_fds: Gauge,
    publish_latency: Histogram,
    storage_pass_appends: Histogram,
    storage_commit: Histogram,
    storage_fsync: Histogram,
    replay_reads: Counter,
    replay_messages: Counter,
    storage_failures: Counter,
    storage_failed: Gauge,
    /// The last storage failure's text, for the admin events.
    storage_error: std::sync::Mutex<String>,
    consumer_pending: Family<ConsumerLabel, Gauge>,
    consumer_redelivered: Family<ConsumerLabel, Gauge>,
    consumer_dead_lettered: Family<ConsumerLabel, Gauge>,
    /// Deliveries dropped for slow consumers, added by writers without a lock.
    pending_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rtc");
        let m = Metrics {
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            dropped: Counter::default(),
            auth_failures: Family::default(),
            requests: Counter::default(),
            requests_unanswered: Family::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            // 50 µs to ~3.3 s, doubling.
            publish_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 17),
            ),
            // 1 to 4096 appends, doubling.
            storage_pass_appends: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 13),
            ),
            // 10 µs to ~5 s, doubling.
            storage_commit: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 20),
            ),
            storage_fsync: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 20),
            ),
            replay_reads: Counter::default(),
            replay_messages: Counter::default(),
            storage_failures: Counter::default(),
            storage_failed: Gauge::default(),
            storage_error: std::sync::Mutex::default(),
            consumer_pending: Family::default(),
            consumer_redelivered: Family::default(),
            consumer_dead_lettered: Family::default(),
            pending_dropped: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_open",
            "Connections being served, by transport",
            m.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "Connections accepted since start, by transport",
            m.connections_accepted.clone(),
        );
        r.register(
            "messages_in",
            "Messages published to the broker (every transport, HTTP included)",
            m.messages_in.clone(),
        );
        r.register("bytes_in", "Payload bytes published", m.bytes_in.clone());
        r.register(
            "messages_out",
            "Live deliveries queued for subscribers",
            m.messages_out.clone(),
        );
        r.register(
            "bytes_out",
            "Encoded message bytes of the live deliveries queued",
            m.bytes_out.clone(),
        );
        r.register(
            "deliveries_dropped",
            "Deliveries dropped because a subscriber's queue was full (slow consumers)",
            m.dropped.clone(),
        );
        r.register(
            "auth_failures",
            "Refused tokens and permissions, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "requests",
            "Requests (request-reply) sent",
            m.requests.clone(),
        );
        r.register(
            "requests_unanswered",
            "Requests that got no reply, by reason (no_responders, timeout)",
            m.requests_unanswered.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Durable publishes, from the read that brought them to their answer (stored per the fsync policy, or refused)",
            m.publish_latency.clone(),
        );
        r.register(
            "storage_pass_appends",
            "Appends stored per storage pass (one write, one flush per the fsync policy)",
            m.storage_pass_appends.clone(),
        );
        r.register(
            "storage_commit_seconds",
            "Storage passes, from their start until as durable as the fsync policy asks",
            m.storage_commit.clone(),
        );
        r.register(
            "storage_fsync_seconds",
            "Flushes of the store to disk",
            m.storage_fsync.clone(),
        );
        r.register(
            "storage_failures",
            "Times the store failed (I/O error, or the disk below store_reserve) and refused writes",
            m.storage_failures.clone(),
        );
        r.register(
            "storage_failed",
            "1 while the store is failed and refuses writes, else 0",
            m.storage_failed.clone(),
        );
        r.register(
            "replay_reads",
            "Reads of the log by replays (subscriptions from a position, resumes, SSE and long-polling)",
            m.replay_reads.clone(),
        );
        r.register(
            "replay_messages_read",
            "Messages read from the log by replays",
            m.replay_messages.clone(),
        );
        r.register(
            "consumer_pending",
            "Delivered and unacknowledged messages of durable consumers: one series per consumer on a topic a config rule names exactly, the rest summed under topic=\"\"",
            m.consumer_pending.clone(),
        );
        r.register(
            "consumer_redelivered",
            "Redeliveries made by durable consumers (labelled as consumer_pending)",
            m.consumer_redelivered.clone(),
        );
        r.register(
            "consumer_dead_lettered",
            "Messages durable consumers moved to their dead-letter topic (labelled as consumer_pending)",
            m.consumer_dead_lettered.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the broker process",
            m.resident_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the broker process",
            m.open_fds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A connection over `transport` is being served (until [`Metrics::closed`]).
    pub fn opened(&self, transport: &str) {
        let label = Transport {
            transport: transport.to_string(),
        };
        self.connections_accepted.get_or_create(&label).inc();
        self.connections_open.get_or_create(&label).inc();
    }

    /// A connection over `transport` ended.
    pub fn closed(&self, transport: &str) {
        let label = Transport {
            transport: transport.to_string(),
        };
        self.connections_open.get_or_create(&label).dec();
    }

    /// Adds what a session counted.
    pub fn add(&self, t: Tally) {
        let Tally {
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
        } = t;
        for (counter, n) in [
            (&self.messages_in, messages_in),
            (&self.bytes_in, bytes_in),
            (&self.messages_out, messages_out),
            (&self.bytes_out, bytes_out),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Messages in and out, and deliveries dropped, since start (the admin figures).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.messages_in.get(),
            self.messages_out.get(),
            self.dropped.get() + self.pending_dropped.load(Ordering::Relaxed),
        )
    }

    /// Deliveries a writer dropped for a slow consumer.
    pub fn dropped(&self, n: u64) {
        self.pending_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn auth_failed(&self, why: AuthFailure) {
        let reason = match why {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::PermissionDenied => "permission_denied",
        };
        self.auth_failures.get_or_create(&Reason { reason }).inc();
    }

    /// A durable publish was answered `elapsed` after it was received.
    pub fn publish_answered(&self, elapsed: std::time::Duration) {
        self.publish_latency.observe(elapsed.as_secs_f64());
    }

    /// A request was sent to responders.
    pub fn request_sent(&self) {
        self.requests.inc();
    }

    /// A request got no reply: `no_responders` or `timeout`.
    pub fn request_unanswered(&self, timeout: bool) {
        let reason = if timeout { "timeout" } else { "no_responders" };
        self.requests_unanswered
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Storage failures since start, whether the store is failed now, and the last
    /// failure's text (the admin events).
    pub fn storage_state(&self) -> (u64, bool, String) {
        let error = self
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            self.storage_failures.get(),
            self.storage_failed.get() != 0,
            error,
        )
    }

    /// A replay read `messages` from the log.
    pub fn replay_read(&self, messages: usize) {
        self.replay_reads.inc();
        self.replay_messages.inc_by(messages as u64);
    }

    /// Replaces the durable consumers' series: those whose topic is in `named` (the
    /// topics config rules name exactly) one each, the others summed, so a client that
    /// invents consumer names cannot grow the series.
    pub fn set_consumers(&self, consumers: &[ConsumerFigures], named: &[String]) {
        let families = [
            &self.consumer_pending,
            &self.consumer_redelivered,
            &self.consumer_dead_lettered,
        ];
        for f in families {
            f.clear();
        }
        let rest = ConsumerLabel {
            topic: String::new(),
            consumer: String::new(),
        };
        for f in families {
            f.get_or_create(&rest).set(0);
        }
        for c in consumers {
            let label = if named.contains(&c.topic) {
                ConsumerLabel {
                    topic: c.topic.clone(),
                    consumer: c.name.clone(),
                }
            } else {
                rest.clone()
            };
            for (f, n) in families
                .iter()
                .zip([c.pending, c.redelivered, c.dead_lettered])
            {
                f.get_or_create(&label).inc_by(n as i64);
            }
        }
    }

    /// The text exposition of every metric, with the process figures read now.
    pub fn render(&self) -> String {
        let dropped = self.pending_dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.inc_by(dropped);
        }
        if let Some(rss) = resident_bytes() {
            self.resident_memory.set(rss as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl crate::engine::StorageObserver for Metrics {
    fn pass(&self, appends: usize, commit: std::time::Duration) {
        self.storage_pass_appends.observe(appends as f64);
        self.storage_commit.observe(commit.as_secs_f64());
    }

    fn fsync(&self, took: std::time::Duration) {
        self.storage_fsync.observe(took.as_secs_f64());
    }

    fn failed(&self, error: &str) {
        *self.storage_error.lock().unwrap_or_else(|p| p.into_inner()) = error.to_string();
        self.storage_failures.inc();
        self.storage_failed.set(1);
    }

    fn recovered(&self) {
        self.storage_failed.set(0);
    }
}

/// The process's resident memory, from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_the_prefix_and_labels() {
        let m = Metrics::new();
        m.opened("tcp");
        m.opened("ws");
        m.closed("ws");
        m.add(Tally {
            messages_in: 3,
            bytes_in: 30,
            ..Tally::default()
        });
        m.dropped(2);
        m.auth_failed(AuthFailure::InvalidToken);
        let text = m.render();
        for line in [
            "rtc_connections_open{transport=\"tcp\"} 1",
            "rtc_connections_open{transport=\"ws\"} 0",
            "rtc_connections_accepted_total{transport=\"ws\"} 1",
            "rtc_messages_in_total 3",
            "rtc_bytes_in_total 30",
            "rtc_deliveries_dropped_total 2",
            "rtc_auth_failures_total{reason=\"invalid_token\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(
            text.contains("rtc_process_resident_memory_bytes "),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
