//! Does a replay hold publishers off? Every sled write waits for the read batch in
//! progress (see `SledStorage` in the broker), so a subscriber replaying a long log
//! delays acknowledged publishes to *any* topic by up to one read batch each time. This
//! measures by how much: the round trip of acknowledged publishes with one in flight to
//! a probe topic, first alone, then while another connection replays a whole log.
//!
//! ```sh
//! cargo build --release -p rtc-benches --example replay_stall
//! target/release/rtc-broker --tcp 127.0.0.1:17500 --data-dir /tmp/stall &
//! target/release/examples/replay_stall fill tcp://127.0.0.1:17500 1000000 1024
//! # optionally restart the broker and drop the page cache, so the replay reads from disk:
//! #   kill %1; sync; echo 3 > /proc/sys/vm/drop_caches; target/release/rtc-broker ... &
//! target/release/examples/replay_stall measure tcp://127.0.0.1:17500 1000000
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use rtc_client::{Client, PublishMessage, StartAt, SubscribeOptions, Topic};

const LOG: &str = "stall.log";
const PROBE: &str = "stall.probe";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: replay_stall fill URL COUNT [PAYLOAD] | replay_stall measure URL COUNT";
    let (Some(mode), Some(url), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        bail!(usage);
    };
    let count: u64 = count.parse().context("COUNT must be a number")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match mode.as_str() {
        "fill" => {
            let payload = match args.get(4) {
                Some(p) => p.parse().context("PAYLOAD must be a number")?,
                None => 1024,
            };
            runtime.block_on(fill(url, count, payload))
        }
        "measure" => runtime.block_on(measure(url, count)),
        _ => bail!(usage),
    }
}

/// Publishes `count` messages of `payload` bytes to the log topic, 256 in flight.
async fn fill(url: &str, count: u64, payload: usize) -> anyhow::Result<()> {
    let client = Client::connect(url).await?;
    let topic = Topic::from(LOG);
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let started = Instant::now();
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for _ in 0..count {
        if acks.len() >= 256 {
            acks.next().await.context("256 in flight")??;
        }
        let m = PublishMessage::new(topic.clone(), body.clone());
        acks.push(client.publish_queued(m).await?);
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    println!(
        "filled {LOG} with {count} messages of {payload} B in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    client.close().await;
    Ok(())
}

/// Probes publish round trips alone, then during a replay of the whole log.
async fn measure(url: &str, count: u64) -> anyhow::Result<()> {
    let probe = Client::connect(url).await?;
    let topic = Topic::from(PROBE);
    let alone = probe_for(&probe, &topic, Duration::from_secs(3), || false).await?;
    report("alone", &alone);

    let reader = Client::connect(url).await?;
    let options = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut sub = reader.subscribe_with(LOG, options).await?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replay = tokio::spawn({
        let done = done.clone();
        async move {
            let started = Instant::now();
            let mut got = 0u64;
            while got < count {
                match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                    Ok(Some(_)) => got += 1,
                    _ => break,
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (got, started.elapsed())
        }
    });
    let during = probe_for(&probe, &topic, Duration::from_secs(120), || {
        done.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await?;
    let (got, took) = replay.await?;
    ensure!(got == count, "the replay got {got} of {count} messages");
    println!(
        "replayed {got} messages in {:.2} s ({:.0} msgs/s)",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    report("during the replay", &during);
    Ok(())
}

/// Acknowledged publishes with one in flight until `stop` says so or `limit` passes;
/// returns each round trip in µs.
async fn probe_for(
    client: &Client,
    topic: &Topic,
    limit: Duration,
    stop: impl Fn() -> bool,
) -> anyhow::Result<Vec<u64>> {
    let started = Instant::now();
    let mut rtts = Vec::new();
    while !stop() && started.elapsed() < limit {
        let sent = Instant::now();
        client
            .publish_message(PublishMessage::new(topic.clone(), &b"probe"[..]))
            .await?;
        rtts.push(sent.elapsed().as_micros() as u64);
    }
    Ok(rtts)
}

fn report(what: &str, rtts: &[u64]) {
    let mut sorted = rtts.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{what}: {} publishes, round trip p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        sorted.last().copied().unwrap_or(0)
    );
}
