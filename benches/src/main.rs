//! `rtc-bench`: load generator for rtc (and, later, side-by-side comparisons with NATS and
//! Redis). One module per workload; each prints a markdown table of what it measured and
//! fails if any message was lost.
//!
//! ```text
//! rtc-bench durable                      # the default matrix: W = 1, 256 x fsync always, interval:10, never
//! rtc-bench durable --window 64 --count 50000 --fsync always
//! rtc-bench durable --server tcp://host:7400 --window 256   # against a running broker
//! rtc-bench fanout --transport tcp --transport tls --transport quic --subscribers 1 --subscribers 10
//! rtc-bench latency --transport tcp --transport tls --transport quic --rate 10000
//! rtc-bench request --system rtc --system nats --window 1 --window 64
//! rtc-bench soak --count 10000000                # the broker as its own process
//! ```

mod connections;
mod durable;
mod durable_peers;
mod durable_plan;
mod harness;
mod live;
mod request;
mod rounds;
mod soak;
mod systems;

use clap::{Parser, Subcommand};

/// Benchmarks for the rtc broker.
#[derive(Debug, Parser)]
#[command(name = "rtc-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Acknowledged publishes with W in flight, then a replay of them all.
    Durable(durable::DurableArgs),
    /// One publisher, S subscribers on an ephemeral topic: throughput and loss.
    Fanout(live::FanoutArgs),
    /// One-way latency at a fixed publish rate: p50 / p99 / p99.9 / max.
    Latency(live::LatencyArgs),
    /// Many idle subscribed connections: broker memory each, and one broadcast to all.
    Connections(connections::ConnectionsArgs),
    /// Request-reply round trips with W requests in flight.
    Request(request::RequestArgs),
    /// A long run against the broker's own process: rate per slice, disk, memory, and
    /// the restart (clean and after SIGKILL) of the log it leaves.
    Soak(soak::SoakArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.workload {
            Workload::Durable(args) => durable::run(args).await,
            Workload::Fanout(args) => live::fanout(args).await,
            Workload::Latency(args) => live::latency(args).await,
            Workload::Connections(args) => connections::run(args).await,
            Workload::Request(args) => request::run(args).await,
            Workload::Soak(args) => soak::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
