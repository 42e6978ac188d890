//! `rtc-cli`: publish, subscribe and inspect an rtc broker from a terminal.
//!
//! `main` parses the command line and dispatches to one module per command family:
//! [`publish`] (`pub`), [`subscribe`] (`sub`), [`topic`] (`topic create|ls|info`) and
//! [`consumer`] (`consumer ls|info`);
//! [`output`] formats received messages.
//! Errors end the process with one line on stderr and exit code 1.

mod consumer;
mod output;
mod publish;
mod subscribe;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line client for the rtc message broker.
#[derive(Debug, Parser)]
#[command(name = "rtc-cli", version, about)]
struct Cli {
    /// Broker URL.
    #[arg(
        long,
        global = true,
        env = "RTC_SERVER",
        default_value = "tcp://127.0.0.1:7400"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a message (or each line of stdin) to a topic.
    Pub(publish::PubArgs),
    /// Subscribe to a pattern and print each message as it arrives.
    Sub(subscribe::SubArgs),
    /// Create, list and inspect topics.
    Topic(topic::TopicArgs),
    /// List and inspect a topic's durable consumers.
    Consumer(consumer::ConsumerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rtc-cli: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Pub(args) => publish::run(&cli.server, args).await,
            Command::Sub(args) => subscribe::run(&cli.server, args).await,
            Command::Topic(args) => topic::run(&cli.server, args).await,
            Command::Consumer(args) => consumer::run(&cli.server, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtc-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to the broker, naming this tool in the handshake.
async fn connect(server: &str) -> anyhow::Result<rtc_client::Client> {
    let options = rtc_client::ConnectOptions {
        client_name: format!("rtc-cli/{}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    Ok(rtc_client::Client::connect_with(server, options).await?)
}
