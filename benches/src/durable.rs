//! The `durable` workload: publish N messages to a durable topic, each acknowledged by
//! the broker (so stored per its fsync policy), with up to W publishes in flight on one
//! connection; then replay the topic from its first message. Reports msgs/s both ways
//! and checks that the acknowledgements carried seqs 1..=N and the replay returned
//! exactly those N messages in order.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Args;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_broker::FsyncPolicy;
use rtc_client::{StartAt, SubscribeOptions};

use crate::harness::Target;

/// Arguments of `rtc-bench durable`.
#[derive(Debug, Args)]
pub struct DurableArgs {
    /// Benchmark a running broker instead of in-process ones (its own fsync applies).
    #[arg(long)]
    server: Option<String>,
    /// Transport to the in-process broker.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: crate::harness::Transport,
    /// Publishes in flight; repeat for several [default: 1 and 256].
    #[arg(long)]
    window: Vec<usize>,
    /// fsync policy of the in-process broker; repeat for several
    /// [default: always, interval:10, never].
    #[arg(long)]
    fsync: Vec<FsyncPolicy>,
    /// Messages per run [default: 2000 when W = 1, else 20000].
    #[arg(long)]
    count: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
}

struct Outcome {
    publish_rate: f64,
    replay_rate: f64,
}

/// Runs the matrix and prints a markdown table.
pub async fn run(args: DurableArgs) -> anyhow::Result<()> {
    let windows = if args.window.is_empty() {
        vec![1, 256]
    } else {
        args.window.clone()
    };
    let policies = match (&args.server, args.fsync.is_empty()) {
        (Some(_), _) => vec![None],
        (None, true) => vec![
            Some(FsyncPolicy::Always),
            Some(FsyncPolicy::IntervalMs(10)),
            Some(FsyncPolicy::Never),
        ],
        (None, false) => args.fsync.iter().copied().map(Some).collect(),
    };
    println!("| fsync | W | messages | payload B | publish msgs/s | replay msgs/s | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for policy in &policies {
        for &window in &windows {
            let count = args
                .count
                .unwrap_or(if window == 1 { 2_000 } else { 20_000 });
            let target = Target::new(args.server.as_deref(), args.transport, |c| {
                if let Some(p) = policy {
                    c.fsync = *p;
                }
            })
            .await?;
            let outcome = one_run(&target, window.max(1), count, args.payload).await;
            target.stop().await;
            let o = outcome?;
            let name = policy.map_or_else(|| "server's".to_string(), |p| p.to_string());
            println!(
                "| {name} | {window} | {count} | {} | {:.0} | {:.0} | 0 |",
                args.payload, o.publish_rate, o.replay_rate
            );
        }
    }
    Ok(())
}

async fn one_run(
    target: &Target,
    window: usize,
    count: u64,
    payload: usize,
) -> anyhow::Result<Outcome> {
    let client = target.connect().await.context("connect")?;
    // A fresh topic per run so seqs start at 1 even against a shared broker.
    let topic = format!("bench.durable.{}", client.connection_id());
    let body = Bytes::from(vec![b'x'; payload]);

    let started = Instant::now();
    let mut seqs = Vec::with_capacity(count as usize);
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < count || !in_flight.is_empty() {
        while sent < count && in_flight.len() < window {
            let (c, t, b) = (client.clone(), topic.clone(), body.clone());
            in_flight.push(async move { c.publish(&t, b).await });
            sent += 1;
        }
        if let Some(ack) = in_flight.next().await {
            seqs.push(ack.context("publish")?.seq);
        }
    }
    let publish_time = started.elapsed();
    seqs.sort_unstable();
    ensure!(
        seqs.iter().copied().eq(1..=count),
        "acknowledged seqs are not 1..={count} (lost or duplicated publishes)"
    );

    let started = Instant::now();
    let mut sub = client
        .subscribe_with(
            &topic,
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await?;
    for expected in 1..=count {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .context("replay stalled")?
            .context("connection closed during replay")?;
        if m.seq != expected || m.payload.len() != payload {
            bail!(
                "replay returned seq {} ({} bytes) where {expected} was due",
                m.seq,
                m.payload.len()
            );
        }
    }
    let replay_time = started.elapsed();
    client.close().await;
    Ok(Outcome {
        publish_rate: count as f64 / publish_time.as_secs_f64(),
        replay_rate: count as f64 / replay_time.as_secs_f64(),
    })
}
