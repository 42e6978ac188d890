//! Live (ephemeral-topic) workloads, against rtc and (with the `peers` feature) NATS
//! core and Redis pub/sub:
//!
//! - **fanout**: one publisher sends N messages as fast as it can (fire-and-forget) to S
//!   subscribers on separate connections; reports published msgs/s, delivered msgs/s
//!   (all subscribers together, first publish to last delivery), MB/s delivered, and
//!   how many deliveries were lost (dropped for slow consumers).
//! - **latency**: one publisher sends at a fixed rate, one subscriber receives; each
//!   payload carries its send time, so the one-way latency of every message is measured
//!   (same process, same clock); reports p50 / p99 / p99.9 / max. Half a second of
//!   messages at the same rate goes first, unmeasured, so that neither the new
//!   connections nor what the previous workload left running count against a system.
//!
//! With `--rounds N` each shape runs every system once per round, in turn, and the
//! table gives medians (`lost`: the most in one round); see [`crate::rounds`].

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use clap::Args;
use futures_util::{FutureExt, StreamExt};

use rtc_broker::topic::TopicRule;

use crate::harness::{Target, Transport};
use crate::rounds::{self, median, spread, Rounds};
use crate::systems::{subscribe, PeerUrls, Publisher, System};

/// Which systems a live workload runs against (shared by both workloads).
#[derive(Debug, Args)]
pub struct Systems {
    /// Systems to measure; repeat for several [default: rtc].
    #[arg(long, value_enum)]
    system: Vec<System>,
    /// Measure an rtc broker running at this URL (its `bench.>` topics should be
    /// ephemeral) instead of an in-process one.
    #[arg(long)]
    rtc_url: Option<String>,
    /// The HTTP gateway of the broker at `--rtc-url`, for `--transport ws`.
    #[arg(long)]
    rtc_http: Option<std::net::SocketAddr>,
    /// Other nodes of the cluster the broker at `--rtc-url` is part of: subscribers
    /// connect to them in turn, the publisher to `--rtc-url`. Repeat for several.
    #[arg(long)]
    rtc_sub_url: Vec<String>,
    #[command(flatten)]
    peers: PeerUrls,
    /// Transports to rtc; repeat for several [default: tcp].
    #[arg(long, value_enum)]
    transport: Vec<Transport>,
    #[command(flatten)]
    rounds: Rounds,
}

/// Arguments of `rtc-bench fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    on: Systems,
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
    #[command(flatten)]
    on: Systems,
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

/// (system, transport) pairs to run: rtc over each transport, each peer once.
fn runs(systems: &[System], transports: &[Transport]) -> Vec<(System, Transport)> {
    let mut out = Vec::new();
    for &system in &or(systems, &[System::Rtc]) {
        match system {
            System::Rtc => out.extend(
                or(transports, &[Transport::Tcp])
                    .into_iter()
                    .map(|t| (system, t)),
            ),
            peer => out.push((peer, Transport::Tcp)),
        }
    }
    out
}

/// Whether a run is rtc's, which rival runs are compared with.
fn is_rtc(run: &(System, Transport)) -> bool {
    run.0 == System::Rtc
}

fn label(system: System, transport: Transport) -> String {
    match system {
        System::Rtc => format!("rtc {transport:?}").to_lowercase(),
        System::Nats => "nats core".into(),
        System::Redis => "redis pub/sub".into(),
    }
}

/// A new in-process broker (`bench.>` ephemeral) for one run, or the one at `--rtc-url`.
async fn target(on: &Systems, transport: Transport) -> anyhow::Result<Target> {
    let target = Target::new(on.rtc_url.as_deref(), transport, |c| {
        c.topic = vec![TopicRule::ephemeral("bench.>")]
    })
    .await?;
    Ok(match (on.rtc_url.is_some(), transport, on.rtc_http) {
        // A running broker: its gateway is where `--rtc-http` says.
        (true, Transport::Ws, Some(http)) => target.with_http(http),
        (true, Transport::Ws, None) => {
            anyhow::bail!("--transport ws with --rtc-url needs --rtc-http")
        }
        _ => target,
    })
}

/// Runs the fan-out matrix and prints a markdown table.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if let Some(caption) = args.on.rounds.caption() {
        println!("{caption}");
    }
    println!("| system | subscribers | payload B | published msgs/s | delivered msgs/s | delivered MB/s | lost | rtc / this, delivered |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let runs = runs(&args.on.system, &args.on.transport);
    for subs in or(&args.subscribers, &[1, 10]) {
        for payload in or(&args.payload, &[128]) {
            // Per run, each round's (published, delivered, lost).
            let figures =
                rounds::alternate(&args.on.rounds, &runs, async |&(system, transport)| {
                    let target = target(&args.on, transport).await?;
                    let on = Where {
                        target: &target,
                        subscribers: &args.on.rtc_sub_url,
                    };
                    let r = fanout_run(on, system, &args.on.peers, subs, payload, args.count).await;
                    target.stop().await;
                    r
                })
                .await?;
            let ratios = rounds::ratios(&runs, &figures, is_rtc, |f| f.1);
            for (i, &(system, transport)) in runs.iter().enumerate() {
                let published = median(figures[i].iter().map(|f| f.0));
                let delivered = median(figures[i].iter().map(|f| f.1));
                let lost = figures[i].iter().map(|f| f.2).max().unwrap_or(0);
                println!(
                    "| {} | {subs} | {payload} | {published:.0} | {delivered:.0} | {:.1} | {lost} | {} |",
                    label(system, transport),
                    delivered * payload as f64 / 1e6,
                    spread(&ratios[i])
                );
            }
        }
    }
    Ok(())
}

/// Where a run's clients connect: the publisher to `target`, subscribers to
/// `subscribers` in turn (rtc only) or, with none, to `target` too.
#[derive(Clone, Copy)]
struct Where<'a> {
    target: &'a Target,
    subscribers: &'a [String],
}

impl Where<'_> {
    async fn subscribe(
        &self,
        i: usize,
        system: System,
        peers: &PeerUrls,
        topic: &str,
    ) -> anyhow::Result<(crate::systems::Payloads, crate::systems::Keep)> {
        match self.subscribers {
            urls if urls.is_empty() || system != System::Rtc => {
                subscribe(system, self.target, peers, topic).await
            }
            urls => subscribe(system, &Target::remote(&urls[i % urls.len()]), peers, topic).await,
        }
    }
}

async fn fanout_run(
    on: Where<'_>,
    system: System,
    peers: &PeerUrls,
    subs: usize,
    payload: usize,
    count: u64,
) -> anyhow::Result<(f64, f64, u64)> {
    let topic = "bench.fan";
    let mut tasks = Vec::new();
    for i in 0..subs {
        let (mut stream, keep) = on.subscribe(i, system, peers, topic).await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut last = Instant::now();
            // Until all arrived, or nothing for 2 s (the rest was dropped). The clock is
            // read (and a timeout armed) only when no message is ready, not per message:
            // the time before a wait is the time of the last delivery, to within one
            // poll. The same loop runs for every system.
            while n < count {
                let next = match stream.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        last = Instant::now();
                        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                };
                if next.is_none() {
                    break;
                }
                n += 1;
            }
            if n == count {
                last = Instant::now();
            }
            drop(keep);
            (n, last)
        }));
    }
    let mut publisher = Publisher::connect(system, on.target, peers).await?;
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let started = Instant::now();
    for _ in 0..count {
        publisher
            .send(topic, body.clone())
            .await
            .context("publish")?;
    }
    publisher.flush().await?;
    let published = count as f64 / started.elapsed().as_secs_f64();
    let mut delivered = 0;
    let mut end = started;
    for t in tasks {
        let (n, last) = t.await?;
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

/// Runs the latency workload per system and prints a markdown table.
pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    if let Some(caption) = args.on.rounds.caption() {
        println!("{caption}");
    }
    println!("| system | rate msgs/s | messages | payload B | p50 µs | p99 µs | p99.9 µs | max µs | lost | rtc / this, p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let runs = runs(&args.on.system, &args.on.transport);
    let payload = args.payload.max(8);
    // Per run, each round's (p50, p99, p99.9, max) in µs and lost.
    let figures = rounds::alternate(&args.on.rounds, &runs, async |&(system, transport)| {
        let target = target(&args.on, transport).await?;
        let on = Where {
            target: &target,
            subscribers: &args.on.rtc_sub_url,
        };
        let r = latency_run(on, system, &args.on.peers, args.rate, args.count, payload).await;
        target.stop().await;
        let (mut lat, lost) = r?;
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
        };
        let max = lat.last().copied().unwrap_or(0) as f64;
        Ok(([pct(0.50), pct(0.99), pct(0.999), max], lost))
    })
    .await?;
    let ratios = rounds::ratios(&runs, &figures, is_rtc, |f| f.0[1]);
    for (i, &(system, transport)) in runs.iter().enumerate() {
        let [p50, p99, p999, max] =
            std::array::from_fn(|k| median(figures[i].iter().map(|f| f.0[k])));
        let lost = figures[i].iter().map(|f| f.1).max().unwrap_or(0);
        println!(
            "| {} | {} | {} | {payload} | {p50:.0} | {p99:.0} | {p999:.0} | {max:.0} | {lost} | {} |",
            label(system, transport),
            args.rate,
            args.count,
            spread(&ratios[i])
        );
    }
    Ok(())
}

async fn latency_run(
    on: Where<'_>,
    system: System,
    peers: &PeerUrls,
    rate: u64,
    count: u64,
    payload: usize,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let topic = "bench.lat";
    // Warm-up messages carry this instead of a send time and are not measured.
    const WARM_UP: u64 = u64::MAX;
    let warm_up = rate / 2;
    let base = Instant::now();
    let (mut stream, keep) = on.subscribe(0, system, peers, topic).await?;
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(count as usize);
        while (lat.len() as u64) < count {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(p)) if p.len() >= 8 => {
                    let sent = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                    if sent == WARM_UP {
                        continue;
                    }
                    let now = base.elapsed().as_micros() as u64;
                    lat.push(now.saturating_sub(sent));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        drop(keep);
        lat
    });
    let mut publisher = Publisher::connect(system, on.target, peers).await?;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for i in 0..warm_up + count {
        // Pace by the schedule, not by sleeps that drift.
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            if wait > Duration::from_micros(200) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut buf = BytesMut::with_capacity(payload);
        buf.put_u64(if i < warm_up {
            WARM_UP
        } else {
            base.elapsed().as_micros() as u64
        });
        buf.resize(payload, b'x');
        publisher.send(topic, buf.freeze()).await?;
        if matches!(system, System::Redis | System::Rtc) {
            // Redis pipelines publishes and rtc's publisher batches them; at a fixed
            // rate, send each one now.
            publisher.flush_pipeline().await?;
        }
    }
    let lat = receiver.await?;
    let lost = count - lat.len() as u64;
    Ok((lat, lost))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{Cli, Workload};

    fn parse(args: &[&str]) -> Workload {
        <Cli as clap::Parser>::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("valid arguments")
            .workload
    }

    /// Both live workloads in two rounds against in-process brokers: every message
    /// must arrive (a lost or damaged one fails the run).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_workloads_run_in_rounds() {
        let Workload::Fanout(args) = parse(&[
            "fanout",
            "--subscribers",
            "2",
            "--payload",
            "16",
            "--count",
            "300",
            "--rounds",
            "2",
        ]) else {
            unreachable!()
        };
        assert_eq!(args.on.rounds.count, 2);
        fanout(args).await.expect("fan-out in two rounds");
        let Workload::Latency(args) = parse(&[
            "latency", "--rate", "2000", "--count", "100", "--rounds", "2",
        ]) else {
            unreachable!()
        };
        latency(args).await.expect("latency in two rounds");
    }
}
