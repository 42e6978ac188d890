//! Shared test harness: a real in-process broker on 127.0.0.1:0 with a temp data dir,
//! and helpers to read subscriptions with a bounded wait.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;

use std::time::Duration;

use rtc_broker::topic::TopicRule;
use rtc_broker::{Broker, BrokerHandle, Config};
use rtc_client::{Message, Subscription};

/// Longest wait for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub handle: BrokerHandle,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The broker's certificate, when it speaks TLS.
    pub ca: Option<std::path::PathBuf>,
}

/// The transports a suite runs over (see [`transport_tests!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    /// QUIC with the broker's self-signed certificate (made in its data dir).
    Quic,
}

/// Starts a broker speaking `transport`; for TLS with a fresh self-signed certificate
/// for 127.0.0.1 / localhost, which [`TestBroker::connect`] trusts.
pub async fn start_over(transport: Transport, tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let ca = (transport == Transport::Tls).then(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        (cert_path, key_path)
    });
    let tls = ca.clone();
    let mut b = start_in(dir, move |c| {
        if let Some((cert, key)) = tls {
            c.tls_cert = Some(cert);
            c.tls_key = Some(key);
        }
        if transport == Transport::Quic {
            c.quic = Some("127.0.0.1:0".parse().unwrap());
        }
        tweak(c)
    })
    .await;
    b.ca = ca.map(|(cert, _)| cert);
    if transport == Transport::Quic {
        b.url = format!("quic://{}", b.handle.quic_addr().expect("QUIC is on"));
        b.ca = Some(
            b.dir
                .path()
                .join(rtc_broker::transport::quic::GENERATED_CERT),
        );
    }
    b
}

impl TestBroker {
    /// Options that reach this broker (its certificate trusted, for TLS).
    pub fn options(&self) -> rtc_client::ConnectOptions {
        rtc_client::ConnectOptions {
            ca_file: self.ca.clone(),
            ..Default::default()
        }
    }

    /// A client connected to this broker.
    pub async fn connect(&self) -> rtc_client::Client {
        rtc_client::Client::connect_with(&self.url, self.options())
            .await
            .unwrap()
    }
}

/// Runs each named `async fn name(t: Transport)` of the calling test file once per
/// transport, as tests `tcp::name`, `tls::name` and `quic::name`.
#[macro_export]
macro_rules! transport_tests {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Transport::Tcp).await
                }
            )*
        }
        mod tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Transport::Tls).await
                }
            )*
        }
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Transport::Quic).await
                }
            )*
        }
    };
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
        .http(None)
        .data_dir(dir.path())
        .configure(tweak)
        .start()
        .await
        .unwrap();
    TestBroker {
        url: handle.url(),
        handle,
        dir,
        ca: None,
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
    TopicRule::ephemeral(pattern)
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

/// `topic`'s info and every message it stores, replayed from the first, with the
/// subscription that replayed them (live from there on).
pub async fn replay_all(
    client: &rtc_client::Client,
    topic: &str,
) -> (rtc_client::TopicInfo, Vec<Message>, Subscription) {
    let info = client.topic_info(topic).await.unwrap();
    let mut replay = client
        .subscribe_with(
            topic,
            rtc_client::SubscribeOptions {
                start: rtc_client::StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stored = take(&mut replay, info.messages as usize).await;
    (info, stored, replay)
}

pub fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}
