//! The `durable` workload against the rivals (needs the `peers` feature):
//!
//! - **jetstream**: a fresh file-storage stream per run; publishes await their PubAck
//!   with W in flight; then a durable pull consumer with explicit acks (one ack per
//!   message, up to 1 000 unacknowledged) reads everything back.
//! - **redis**: a fresh stream key per run; `XADD` with W in flight (redis-rs pipelines
//!   concurrent requests on one connection); then a consumer group reads with
//!   `XREADGROUP COUNT 1000` and acknowledges each batch with one `XACK`.
//!
//! Both check what they got back with [`crate::durable_plan::Checker`], exactly as the rtc
//! run does: every message exactly once.

use crate::durable_plan::{Measured, Plan};
use crate::systems::PeerUrls;

/// A rival for the durable workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rival {
    /// NATS JetStream.
    JetStream,
    /// Redis streams.
    RedisStreams,
}

/// Runs the workload once against `rival`.
pub async fn run(rival: Rival, urls: &PeerUrls, plan: &Plan) -> anyhow::Result<Measured> {
    imp::run(rival, urls, plan).await
}

#[cfg(feature = "peers")]
mod imp {
    use std::future::IntoFuture;
    use std::time::{Duration, Instant};

    use anyhow::{ensure, Context};
    use async_nats::jetstream::{self, consumer, stream};
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use redis::streams::{StreamReadOptions, StreamReadReply};
    use redis::AsyncCommands;

    use super::Rival;
    use crate::durable_plan::{Checker, Measured, Plan};
    use crate::systems::PeerUrls;

    /// How long the consume phase may wait for one more message.
    const STALL: Duration = Duration::from_secs(30);
    /// Most messages delivered and not yet acknowledged (as rtc's consumer default).
    const UNACKED: usize = 1000;

    pub async fn run(rival: Rival, urls: &PeerUrls, plan: &Plan) -> anyhow::Result<Measured> {
        match rival {
            Rival::JetStream => jetstream_run(&urls.nats_url, plan).await,
            Rival::RedisStreams => redis_run(&urls.redis_url, plan).await,
        }
    }

    async fn jetstream_run(url: &str, plan: &Plan) -> anyhow::Result<Measured> {
        let client = async_nats::connect(url).await.context("connect to NATS")?;
        let js = jetstream::new(client);
        let name = format!("BENCH_{}", std::process::id() as u64 * 1000 + plan.run_id);
        let subject = format!("bench.durable.{}", name.to_lowercase());
        let _ = js.delete_stream(&name).await;
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("create a JetStream stream (is nats-server running with -js?)")?;

        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut acked = Vec::with_capacity(plan.count as usize);
        let mut sent = 0;
        while sent < plan.count || !in_flight.is_empty() {
            while sent < plan.count && in_flight.len() < plan.window {
                let ack = js
                    .publish(subject.clone(), plan.payload(sent))
                    .await
                    .context("publish")?;
                in_flight.push(ack.into_future());
                sent += 1;
            }
            if let Some(ack) = in_flight.next().await {
                acked.push(ack.context("publish ack")?.sequence);
            }
        }
        let publish_time = started.elapsed();
        acked.sort_unstable();
        ensure!(
            acked.iter().copied().eq(1..=plan.count),
            "JetStream acknowledged seqs are not 1..={}",
            plan.count
        );

        let started = Instant::now();
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: UNACKED as i64,
                ..Default::default()
            })
            .await
            .context("create a pull consumer")?;
        let mut messages = consumer.messages().await.context("pull")?;
        let mut checker = Checker::new(plan);
        while !checker.done() {
            let m = match tokio::time::timeout(STALL, messages.next())
                .await
                .context("JetStream consume stalled")?
                .context("the consumer's stream ended")?
            {
                Ok(m) => m,
                // Reported when a pull request's heartbeat is late (a stalled VM) and
                // not fatal: the stream goes on. A real stall still ends at STALL.
                Err(e) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                    continue
                }
                Err(e) => anyhow::bail!("pull: {e}"),
            };
            checker.check(&m.payload)?;
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        let consume_time = started.elapsed();
        drop(messages);
        let _ = js.delete_stream(&name).await;
        Ok(Measured::new(plan, publish_time, consume_time, None))
    }

    async fn redis_run(url: &str, plan: &Plan) -> anyhow::Result<Measured> {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await
            .context("connect to Redis")?;
        let key = format!("bench.durable.{}.{}", std::process::id(), plan.run_id);
        let _: () = conn.del(&key).await?;
        let _: () = conn.xgroup_create_mkstream(&key, "bench", "0").await?;

        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut sent = 0;
        let mut acked = 0;
        while sent < plan.count || !in_flight.is_empty() {
            while sent < plan.count && in_flight.len() < plan.window {
                let mut c = conn.clone();
                let (key, body) = (key.clone(), plan.payload(sent));
                in_flight.push(async move {
                    let id: redis::RedisResult<String> =
                        c.xadd(&key, "*", &[("p", body.as_ref())]).await;
                    id
                });
                sent += 1;
            }
            if let Some(id) = in_flight.next().await {
                id.context("XADD")?;
                acked += 1;
            }
        }
        let publish_time = started.elapsed();
        ensure!(acked == plan.count, "Redis acknowledged {acked} XADDs");

        let started = Instant::now();
        let options = StreamReadOptions::default()
            .group("bench", "c1")
            .count(UNACKED)
            .block(STALL.as_millis() as usize);
        let mut checker = Checker::new(plan);
        while !checker.done() {
            let reply: StreamReadReply = conn
                .xread_options(&[&key], &[">"], &options)
                .await
                .context("XREADGROUP")?;
            let ids: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            ensure!(!ids.is_empty(), "Redis consume stalled");
            for id in &ids {
                let body: Vec<u8> = id
                    .get("p")
                    .context("a stream entry without its payload field")?;
                checker.check(&body)?;
            }
            let names: Vec<&str> = ids.iter().map(|i| i.id.as_str()).collect();
            let n: usize = conn.xack(&key, "bench", &names).await.context("XACK")?;
            ensure!(n == names.len(), "XACK acknowledged {n} of {}", names.len());
        }
        let consume_time = started.elapsed();
        let _: () = conn.del(&key).await?;
        Ok(Measured::new(plan, publish_time, consume_time, None))
    }
}

#[cfg(not(feature = "peers"))]
mod imp {
    use super::Rival;
    use crate::durable_plan::{Measured, Plan};
    use crate::systems::PeerUrls;

    pub async fn run(_: Rival, _: &PeerUrls, _: &Plan) -> anyhow::Result<Measured> {
        Err(crate::systems::peers_missing())
    }
}
