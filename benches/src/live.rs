//! Live (ephemeral-topic) workloads:
//!
//! - **fanout**: one publisher sends N messages as fast as it can (fire-and-forget) to S
//!   subscribers on separate connections; reports published msgs/s, delivered msgs/s
//!   (all subscribers together, first publish to last delivery), MB/s delivered, and
//!   how many deliveries were lost (dropped for slow consumers).
//! - **latency**: one publisher sends at a fixed rate, one subscriber receives; each
//!   payload carries its send time, so the one-way latency of every message is measured
//!   (same process, same clock); reports p50 / p99 / p99.9 / max.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use clap::Args;
use rtc_client::PublishMessage;

use rtc_broker::topic::TopicRule;

use crate::harness::{Target, Transport};

/// Arguments of `rtc-bench fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Transports to run over; repeat for several [default: tcp].
    #[arg(long, value_enum)]
    transport: Vec<Transport>,
    /// Subscribers; repeat for several [default: 1 and 10].
    #[arg(long)]
    subscribers: Vec<usize>,
    /// Payload size in bytes; repeat for several [default: 128].
    #[arg(long)]
    payload: Vec<usize>,
    /// Messages published per run.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
}

/// Arguments of `rtc-bench latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Transports to run over; repeat for several [default: tcp].
    #[arg(long, value_enum)]
    transport: Vec<Transport>,
    /// Messages per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Messages per run.
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Payload size in bytes (at least 8).
    #[arg(long, default_value_t = 128)]
    payload: usize,
}

fn or<T: Clone>(v: &[T], default: &[T]) -> Vec<T> {
    if v.is_empty() {
        default.to_vec()
    } else {
        v.to_vec()
    }
}

/// Runs the fan-out matrix and prints a markdown table.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    println!("| transport | subscribers | payload B | published msgs/s | delivered msgs/s | delivered MB/s | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for transport in or(&args.transport, &[Transport::Tcp]) {
        for subs in or(&args.subscribers, &[1, 10]) {
            for payload in or(&args.payload, &[128]) {
                let target = Target::new(None, transport, |c| {
                    c.topic = vec![TopicRule::ephemeral("bench.>")]
                })
                .await?;
                let r = fanout_run(&target, subs, payload, args.count).await;
                target.stop().await;
                let (published, delivered, lost) = r?;
                println!(
                    "| {transport:?} | {subs} | {payload} | {published:.0} | {delivered:.0} | {:.1} | {lost} |",
                    delivered * payload as f64 / 1e6
                );
            }
        }
    }
    Ok(())
}

async fn fanout_run(
    target: &Target,
    subs: usize,
    payload: usize,
    count: u64,
) -> anyhow::Result<(f64, f64, u64)> {
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subs);
    for _ in 0..subs {
        let client = target.connect().await?;
        let mut sub = client.subscribe("bench.fan").await?;
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            let mut n = 0u64;
            let mut last = Instant::now();
            // Until all arrived, or nothing for 2 s (the rest was dropped).
            while n < count {
                match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                    Ok(Some(_)) => {
                        n += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (n, last, client)
        }));
    }
    for _ in 0..subs {
        ready_rx.recv().await;
    }
    let publisher = target.connect().await?;
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let started = Instant::now();
    for _ in 0..count {
        publisher
            .publish_nowait(PublishMessage::new("bench.fan", body.clone()))
            .await
            .context("publish")?;
    }
    // An acknowledged publish marks the point where the broker has read everything.
    publisher.publish("bench.end", "end").await?;
    let published = count as f64 / started.elapsed().as_secs_f64();
    let mut delivered = 0;
    let mut end = started;
    for t in tasks {
        let (n, last, _client) = t.await?;
        delivered += n;
        end = end.max(last);
    }
    let lost = count * subs as u64 - delivered;
    Ok((
        published,
        delivered as f64 / (end - started).as_secs_f64(),
        lost,
    ))
}

/// Runs the latency workload per transport and prints a markdown table.
pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    println!("| transport | rate msgs/s | messages | payload B | p50 µs | p99 µs | p99.9 µs | max µs | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for transport in or(&args.transport, &[Transport::Tcp]) {
        let target = Target::new(None, transport, |c| {
            c.topic = vec![TopicRule::ephemeral("bench.>")]
        })
        .await?;
        let r = latency_run(&target, args.rate, args.count, args.payload.max(8)).await;
        target.stop().await;
        let (mut lat, lost) = r?;
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "| {transport:?} | {} | {} | {} | {} | {} | {} | {} | {lost} |",
            args.rate,
            args.count,
            args.payload.max(8),
            pct(0.50),
            pct(0.99),
            pct(0.999),
            lat.last().copied().unwrap_or(0)
        );
    }
    Ok(())
}

async fn latency_run(
    target: &Target,
    rate: u64,
    count: u64,
    payload: usize,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let base = Instant::now();
    let client = target.connect().await?;
    let mut sub = client.subscribe("bench.lat").await?;
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(count as usize);
        while (lat.len() as u64) < count {
            match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                Ok(Some(m)) => {
                    let sent = u64::from_be_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    let now = base.elapsed().as_micros() as u64;
                    lat.push(now.saturating_sub(sent));
                }
                _ => break,
            }
        }
        (lat, client)
    });
    let publisher = target.connect().await?;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for i in 0..count {
        // Pace by the schedule, not by sleeps that drift.
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            if wait > Duration::from_micros(200) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut buf = BytesMut::with_capacity(payload);
        buf.put_u64(base.elapsed().as_micros() as u64);
        buf.resize(payload, b'x');
        publisher
            .publish_nowait(PublishMessage::new("bench.lat", buf.freeze()))
            .await?;
    }
    let (lat, _client) = receiver.await?;
    let lost = count - lat.len() as u64;
    Ok((lat, lost))
}
