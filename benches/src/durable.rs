//! The `durable` workload: publish N messages to a durable log, each acknowledged by
//! the system once stored per its durability setting, with up to W publishes in flight
//! on one connection; then read them all back through a durable consumer that
//! acknowledges each message. Reports msgs/s both ways (and, for rtc, a plain replay
//! from the first message) and fails unless every message came back exactly once. Runs against rtc and, with the `peers` feature, NATS JetStream and
//! Redis streams ([`crate::durable_peers`]); each rival row carries the ratio rtc / rival.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_broker::FsyncPolicy;
use rtc_client::{ConsumerOptions, PublishMessage, StartAt, SubscribeOptions};

use crate::durable_peers::{self, Rival};
use crate::durable_plan::{Checker, Measured, Plan};
use crate::harness::Target;
use crate::rounds::{self, median, spread, Rounds};
use crate::systems::PeerUrls;

/// A system the durable workload runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurableSystem {
    /// rtc: an in-process broker per fsync policy, or `--server`.
    Rtc,
    /// NATS JetStream at `--nats-url` (file storage).
    Jetstream,
    /// Redis streams at `--redis-url`.
    Redis,
}

/// Arguments of `rtc-bench durable`.
#[derive(Debug, Args)]
pub struct DurableArgs {
    /// Systems to measure; repeat for several [default: rtc].
    #[arg(long, value_enum)]
    system: Vec<DurableSystem>,
    /// Benchmark a running rtc broker instead of in-process ones (its own fsync applies).
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    peers: PeerUrls,
    /// How the running servers store (`--server`, JetStream, Redis), for the table.
    #[arg(long, default_value = "server's setting")]
    durability: String,
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
    /// Messages per run [default: 5000 when W = 1, else 100000: long enough (about a
    /// second per system) that one scheduling stall does not decide the figure].
    #[arg(long)]
    count: Option<u64>,
    /// Payload size in bytes (at least 8: each carries its index).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    #[command(flatten)]
    rounds: Rounds,
}

/// Runs the matrix and prints a markdown table.
pub async fn run(args: DurableArgs) -> anyhow::Result<()> {
    let windows = if args.window.is_empty() {
        vec![1, 256]
    } else {
        args.window.clone()
    };
    let systems = if args.system.is_empty() {
        vec![DurableSystem::Rtc]
    } else {
        args.system.clone()
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
    let size = args.payload.max(8);
    // Every configuration measured per window, in order; rival rows are compared with
    // the last rtc configuration before them.
    let configs: Vec<(DurableSystem, Option<FsyncPolicy>)> = systems
        .iter()
        .flat_map(|&system| match system {
            DurableSystem::Rtc => policies.iter().map(|&p| (system, p)).collect(),
            _ => vec![(system, None)],
        })
        .collect();
    if let Some(caption) = args.rounds.caption() {
        println!("{caption}");
    }
    println!("| system | durability | W | messages | payload B | publish msgs/s | consume + ack msgs/s | replay msgs/s | rtc / this: publish, consume | lost |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut run_id = 0;
    for &window in &windows {
        let count = args
            .count
            .unwrap_or(if window == 1 { 5_000 } else { 100_000 });
        let measured = rounds::alternate(&args.rounds, &configs, async |&(system, policy)| {
            run_id += 1;
            let plan = Plan {
                window: window.max(1),
                count,
                size,
                run_id,
            };
            measure(&args, system, policy, &plan).await
        })
        .await?;
        let is_rtc = |c: &(DurableSystem, _)| c.0 == DurableSystem::Rtc;
        let publish_ratios = rounds::ratios(&configs, &measured, is_rtc, |m| m.publish_rate);
        let consume_ratios = rounds::ratios(&configs, &measured, is_rtc, |m| m.consume_rate);
        for (i, &(system, policy)) in configs.iter().enumerate() {
            let name = match system {
                DurableSystem::Rtc => "rtc",
                DurableSystem::Jetstream => "nats jetstream",
                DurableSystem::Redis => "redis streams",
            };
            let runs = &measured[i];
            let publish = median(runs.iter().map(|m| m.publish_rate));
            let consume = median(runs.iter().map(|m| m.consume_rate));
            let replay = runs
                .iter()
                .map(|m| m.replay_rate)
                .collect::<Option<Vec<f64>>>()
                .map_or("—".to_string(), |r| format!("{:.0}", median(r)));
            let ratio = ratio_cell(&publish_ratios[i], &consume_ratios[i]);
            let durability = policy.map_or(args.durability.clone(), |p| format!("fsync {p}"));
            println!(
                "| {name} | {durability} | {window} | {count} | {size} | {publish:.0} | {consume:.0} | {replay} | {ratio} | 0 |"
            );
        }
    }
    Ok(())
}

/// One run of `system` (with `policy`, for an in-process rtc broker).
async fn measure(
    args: &DurableArgs,
    system: DurableSystem,
    policy: Option<FsyncPolicy>,
    plan: &Plan,
) -> anyhow::Result<Measured> {
    match system {
        DurableSystem::Rtc => {
            let target = Target::new(args.server.as_deref(), args.transport, |c| {
                if let Some(p) = policy {
                    c.fsync = p;
                }
            })
            .await?;
            let m = rtc_run(&target, plan).await;
            target.stop().await;
            m
        }
        DurableSystem::Jetstream => durable_peers::run(Rival::JetStream, &args.peers, plan).await,
        DurableSystem::Redis => durable_peers::run(Rival::RedisStreams, &args.peers, plan).await,
    }
}

/// The ratio column: `publish, consume`, each summarised over the rounds; `—` for
/// rtc's own rows.
fn ratio_cell(publish: &[f64], consume: &[f64]) -> String {
    if publish.is_empty() && consume.is_empty() {
        return "—".to_string();
    }
    format!("{}, {}", spread(publish), spread(consume))
}

/// Publishes with `plan.window` in flight, replays from the first message, then
/// consumes everything through a durable consumer acknowledging each message.
async fn rtc_run(target: &Target, plan: &Plan) -> anyhow::Result<Measured> {
    let client = target.connect().await.context("connect")?;
    // A fresh topic per run so seqs start at 1 even against a shared broker.
    // Not under `bench.>`, which benches/compare.sh makes ephemeral for the live runs.
    let topic = format!("durable.bench.{}.{}", client.connection_id(), plan.run_id);

    // Like the JetStream run: each publish is queued, and only the future of its
    // acknowledgement is kept in flight.
    let started = Instant::now();
    let topic_ref = rtc_client::Topic::from(topic.as_str());
    let mut seqs = Vec::with_capacity(plan.count as usize);
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < plan.count || !in_flight.is_empty() {
        while sent < plan.count && in_flight.len() < plan.window {
            let m = PublishMessage::new(topic_ref.clone(), plan.payload(sent));
            in_flight.push(client.publish_queued(m).await.context("publish")?);
            sent += 1;
        }
        if let Some(ack) = in_flight.next().await {
            seqs.push(ack.context("publish")?.seq);
        }
    }
    let publish_time = started.elapsed();
    seqs.sort_unstable();
    ensure!(
        seqs.iter().copied().eq(1..=plan.count),
        "acknowledged seqs are not 1..={} (lost or duplicated publishes)",
        plan.count
    );

    let started = Instant::now();
    let from_first = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut sub = client.subscribe_with(&topic, from_first.clone()).await?;
    let mut checker = Checker::new(plan);
    let mut last = 0;
    while !checker.done() {
        let m = next(&mut sub, "replay").await?;
        checker.check(&m.payload)?;
        ensure!(m.seq == last + 1, "replay gave seq {} after {last}", m.seq);
        last = m.seq;
    }
    let replay_time = started.elapsed();
    sub.unsubscribe().await?;

    let started = Instant::now();
    let consumer = SubscribeOptions {
        consumer: Some(ConsumerOptions::new("bench")),
        ..from_first
    };
    let mut sub = client.subscribe_with(&topic, consumer).await?;
    let mut checker = Checker::new(plan);
    let mut last = 0;
    while !checker.done() {
        let m = next(&mut sub, "consume").await?;
        checker.check(&m.payload)?;
        ensure!(
            m.seq == last + 1,
            "the consumer got seq {} after {last}",
            m.seq
        );
        last = m.seq;
        sub.ack_nowait(&m).await?;
    }
    let consume_time = started.elapsed();
    client.close().await;
    Ok(Measured::new(
        plan,
        publish_time,
        consume_time,
        Some(replay_time),
    ))
}

async fn next(
    sub: &mut rtc_client::Subscription,
    phase: &str,
) -> anyhow::Result<rtc_client::Message> {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .with_context(|| format!("{phase} stalled"))?
        .with_context(|| format!("connection closed during {phase}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole workload, twice over, against an in-process broker: every message of
    /// every round must come back exactly once (the run fails otherwise).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_round_gets_every_message_back_exactly_once() {
        let parse = |args: &[&str]| {
            let all = ["rtc-bench", "durable"].iter().chain(args).copied();
            match <crate::Cli as clap::Parser>::try_parse_from(all)?.workload {
                crate::Workload::Durable(args) => Ok::<_, clap::Error>(args),
                _ => unreachable!("a durable command line"),
            }
        };
        let args: DurableArgs = parse(&[
            "--window", "1", "--window", "8", "--count", "40", "--rounds", "2", "--fsync", "never",
            "--fsync", "always",
        ])
        .expect("valid arguments");
        assert_eq!(args.rounds.count, 2);
        run(args).await.expect("every message back exactly once");
        assert!(parse(&["--rounds", "0"]).is_err(), "no rounds is refused");
    }

    #[test]
    fn ratio_cells() {
        assert_eq!(ratio_cell(&[], &[]), "—");
        assert_eq!(ratio_cell(&[2.0], &[4.0]), "2.00, 4.00");
        assert_eq!(
            ratio_cell(&[2.5, 1.5, 2.0], &[4.0, 3.0, 5.0]),
            "2.00 (1.50–2.50), 4.00 (3.00–5.00)"
        );
    }
}
