//! `rtc-bench request`: request-reply round trips, against rtc and (with the `peers`
//! feature) NATS request-reply. One responder on its own connection echoes each
//! request's payload; one requester keeps W requests in flight and counts the answers
//! per second, first request to last answer. A request that fails or times out fails
//! the run.
//!
//! rtc: the responder subscribes in a queue group and answers with `Client::reply`; the
//! requester uses `Client::request`. NATS: the responder subscribes in a queue group and
//! publishes to each message's reply subject; the requester uses `Client::request`
//! (async-nats's shared reply inbox).

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use futures_util::stream::{self, StreamExt};

use rtc_broker::topic::TopicRule;

use crate::harness::{Target, Transport};
use crate::rounds::{self, median, spread, Rounds};
use crate::systems::{PeerUrls, System};

/// The topic requests go to.
const TOPIC: &str = "bench.req";
/// How long one request may wait.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `rtc-bench request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Systems to measure (rtc, nats); repeat for several [default: rtc].
    #[arg(long, value_enum)]
    system: Vec<System>,
    /// Measure an rtc broker running at this URL instead of an in-process one.
    #[arg(long)]
    rtc_url: Option<String>,
    #[command(flatten)]
    peers: PeerUrls,
    /// Requests in flight; repeat for several [default: 1 and 64].
    #[arg(long)]
    window: Vec<usize>,
    /// Requests per run.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    #[command(flatten)]
    rounds: Rounds,
}

/// Runs the request matrix and prints a markdown table.
pub async fn run(args: RequestArgs) -> anyhow::Result<()> {
    if let Some(caption) = args.rounds.caption() {
        println!("{caption}");
    }
    println!("| system | in flight | payload B | requests | round trips/s | rtc / this |");
    println!("|---|---:|---:|---:|---:|---:|");
    let systems = if args.system.is_empty() {
        vec![System::Rtc]
    } else {
        args.system.clone()
    };
    let windows = if args.window.is_empty() {
        vec![1, 64]
    } else {
        args.window.clone()
    };
    let body = Bytes::from(vec![b'x'; args.payload]);
    for window in windows {
        let figures = rounds::alternate(&args.rounds, &systems, async |&system| {
            measure(&args, system, window, body.clone()).await
        })
        .await?;
        let ratios = rounds::ratios(&systems, &figures, |s| *s == System::Rtc, |f| *f);
        for (i, system) in systems.iter().enumerate() {
            let name = match system {
                System::Rtc => "rtc",
                System::Nats => "nats core",
                System::Redis => "redis",
            };
            println!(
                "| {name} | {window} | {} | {} | {:.0} | {} |",
                args.payload,
                args.count,
                median(figures[i].iter().copied()),
                spread(&ratios[i])
            );
        }
    }
    Ok(())
}

/// Round trips per second of one run.
async fn measure(
    args: &RequestArgs,
    system: System,
    window: usize,
    body: Bytes,
) -> anyhow::Result<f64> {
    match system {
        System::Rtc => {
            let target = Target::new(args.rtc_url.as_deref(), Transport::Tcp, |c| {
                c.topic = vec![TopicRule::ephemeral("bench.>")];
                c.publish_rate = 0;
            })
            .await?;
            let r = rtc_run(&target, window, args.count, body).await;
            target.stop().await;
            r
        }
        System::Nats => peer::nats_run(&args.peers.nats_url, window, args.count, body).await,
        System::Redis => anyhow::bail!("Redis has no request-reply"),
    }
}

async fn rtc_run(target: &Target, window: usize, count: u64, body: Bytes) -> anyhow::Result<f64> {
    let responder = target.connect().await?;
    let options = rtc_client::SubscribeOptions {
        group: Some("bench".into()),
        ..Default::default()
    };
    let mut requests = responder.subscribe_with(TOPIC, options).await?;
    let answering = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let payload = request.payload.clone();
            if responder.reply(&request, payload).await.is_err() {
                break;
            }
        }
    });
    let requester = target.connect().await?;
    let started = Instant::now();
    let mut answers = stream::iter(0..count)
        .map(|_| requester.request(TOPIC, body.clone(), TIMEOUT))
        .buffer_unordered(window);
    while let Some(answer) = answers.next().await {
        anyhow::ensure!(answer?.payload.len() == body.len(), "a damaged answer");
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    answering.abort();
    requester.close().await;
    Ok(rate)
}

#[cfg(feature = "peers")]
mod peer {
    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt};
    use std::time::Instant;

    use super::TOPIC;

    pub async fn nats_run(
        url: &str,
        window: usize,
        count: u64,
        body: Bytes,
    ) -> anyhow::Result<f64> {
        let responder = async_nats::connect(url).await?;
        let mut requests = responder
            .queue_subscribe(TOPIC.to_string(), "bench".to_string())
            .await?;
        responder.flush().await?;
        let answering = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    if responder.publish(reply, request.payload).await.is_err() {
                        break;
                    }
                }
            }
        });
        let requester = async_nats::connect(url).await?;
        let started = Instant::now();
        let mut answers = stream::iter(0..count)
            .map(|_| requester.request(TOPIC.to_string(), body.clone()))
            .buffer_unordered(window);
        while let Some(answer) = answers.next().await {
            anyhow::ensure!(answer?.payload.len() == body.len(), "a damaged answer");
        }
        let rate = count as f64 / started.elapsed().as_secs_f64();
        answering.abort();
        Ok(rate)
    }
}

#[cfg(not(feature = "peers"))]
mod peer {
    use bytes::Bytes;

    pub async fn nats_run(_: &str, _: usize, _: u64, _: Bytes) -> anyhow::Result<f64> {
        Err(crate::systems::peers_missing())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cli, Workload};

    /// Both windows, two rounds, against in-process brokers: every request answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_rounds_answer_every_request() {
        let args = [
            "bench", "request", "--window", "1", "--window", "8", "--count", "200", "--rounds", "2",
        ];
        let Workload::Request(args) = <Cli as clap::Parser>::try_parse_from(args)
            .expect("valid arguments")
            .workload
        else {
            unreachable!()
        };
        super::run(args).await.expect("every request answered");
    }
}
