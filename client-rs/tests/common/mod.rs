//! Shared test harness: a real in-process broker on 127.0.0.1:0 with a temp data dir,
//! and helpers to read subscriptions with a bounded wait.
#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use rtc_broker::topic::{StorageName, TopicRule};
use rtc_broker::{Broker, BrokerHandle, Config};
use rtc_client::{Message, Subscription};

/// Longest wait for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub handle: BrokerHandle,
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    start_in(tempfile::tempdir().unwrap(), tweak).await
}

/// Starts a broker on an existing data dir (to restart one).
pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let handle = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .configure(tweak)
        .start()
        .await
        .unwrap();
    TestBroker {
        url: format!("tcp://{}", handle.tcp_addr()),
        handle,
        dir,
    }
}

impl TestBroker {
    /// Shuts down gracefully and returns the data dir for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.handle.shutdown().await;
        self.dir
    }
}

pub fn ephemeral_rule(pattern: &str) -> TopicRule {
    TopicRule {
        pattern: pattern.to_string(),
        storage: StorageName::Ephemeral,
        max_age: None,
        max_msgs: None,
        max_bytes: None,
        dedup_window: None,
    }
}

pub async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message within the wait")
        .expect("subscription open")
}

/// Collects messages until one whose payload is `marker` (which is not returned).
pub async fn until_marker(sub: &mut Subscription, marker: &str) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        let m = next(sub).await;
        if m.payload == marker.as_bytes() {
            return got;
        }
        got.push(m);
    }
}

/// The next `n` messages.
pub async fn take(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next(sub).await);
    }
    got
}

pub fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}
