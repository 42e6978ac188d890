//! Cluster-mode harness: broker processes given one real redis-server.
#![allow(dead_code)]

use rtc_client::{Client, PublishMessage};
use rtc_testkit::redis_server::RedisServer;
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

/// A config every node shares: `live.>` is ephemeral, the rest durable.
const CONFIG: &str = r#"
fsync = "never"
[[topic]]
pattern = "live.>"
storage = "ephemeral"
"#;

pub struct Node {
    pub broker: BrokerProcess,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn start(redis: &RedisServer, prefix: &str) -> Node {
        Self::start_with(redis, prefix, "")
    }

    /// A node with `cluster` added to its `[cluster]` section (TOML lines).
    pub fn start_with(redis: &RedisServer, prefix: &str, cluster: &str) -> Node {
        let section = format!(
            "redis = \"{}\"\nprefix = \"{prefix}\"\n{cluster}",
            redis.url()
        );
        Self::start_section(&section)
    }

    /// A node whose `[cluster]` section is `section` (TOML lines).
    pub fn start_section(section: &str) -> Node {
        let dir = temp_dir();
        let config = dir.path().join("rtc.toml");
        std::fs::write(&config, format!("{CONFIG}\n[cluster]\n{section}\n")).unwrap();
        let data = dir.path().join("data");
        let config = config.to_str().unwrap().to_string();
        let broker =
            BrokerProcess::start(&workspace_bin("rtc-broker"), &data, &["--config", &config]);
        Node { broker, _dir: dir }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.broker.url()).await.unwrap()
    }
}

/// Each test its own prefix on its own Redis, so nothing is shared between tests.
pub fn nodes(redis: &RedisServer, n: usize) -> Vec<Node> {
    (0..n).map(|_| Node::start(redis, "t")).collect()
}

/// Publishes `n` messages to `topic` one after another, each acknowledged, with IDs
/// `<who>-<i>`.
pub fn publish_in_background(
    client: Client,
    who: &'static str,
    topic: &'static str,
    n: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            let m = PublishMessage::new(topic, format!("m{i}")).msg_id(format!("{who}-{i}"));
            client.publish_message(m).await.unwrap();
        }
    })
}
