//! `rtc-cli`: publish, subscribe and inspect an rtc broker from a terminal.
//!
//! `main` parses the command line and dispatches to one module per command family:
//! [`publish`] (`pub`), [`subscribe`] (`sub`), [`request`] (`req`, `reply`),
//! [`presence`] (`presence`), [`topic`] (`topic create|ls|info|rm|purge`),
//! [`consumer`] (`consumer ls|info|rm`) and [`top`] (`top`);
//! [`output`] formats received messages.
//! Errors end the process with one line on stderr and exit code 1.

mod consumer;
mod output;
mod presence;
mod publish;
mod request;
mod subscribe;
mod top;
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
    /// Authentication token, for a broker that requires one.
    #[arg(long, global = true, env = "RTC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For tls:// servers: PEM file with the certificate(s) to trust (e.g. the broker's).
    #[arg(long, global = true, value_name = "FILE", env = "RTC_CA")]
    ca: Option<std::path::PathBuf>,
    /// For tls:// servers: accept any certificate. Development only: anyone on the path
    /// can read and change the traffic.
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a message (or each line of stdin) to a topic.
    Pub(publish::PubArgs),
    /// Subscribe to a pattern and print each message as it arrives.
    Sub(subscribe::SubArgs),
    /// Send a request and print the reply.
    Req(request::ReqArgs),
    /// Answer requests: echo them, or with the output of a command.
    Reply(request::ReplyArgs),
    /// Who is in a room: its members, or their count.
    Presence(presence::PresenceArgs),
    /// Create, list, inspect, delete and purge topics.
    Topic(topic::TopicArgs),
    /// List, inspect and delete a topic's durable consumers.
    Consumer(consumer::ConsumerArgs),
    /// The broker's figures, refreshed every second (reads the admin API over HTTP).
    Top(top::TopArgs),
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
    if cli.insecure {
        eprintln!("rtc-cli: WARNING: --insecure: the broker's TLS certificate is NOT verified; use only for development");
    }
    let server = Server {
        url: cli.server,
        token: cli.token.unwrap_or_default(),
        ca: cli.ca,
        insecure: cli.insecure,
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Pub(args) => publish::run(&server, args).await,
            Command::Sub(args) => subscribe::run(&server, args).await,
            Command::Req(args) => request::run_req(&server, args).await,
            Command::Reply(args) => request::run_reply(&server, args).await,
            Command::Presence(args) => presence::run(&server, args).await,
            Command::Topic(args) => topic::run(&server, args).await,
            Command::Consumer(args) => consumer::run(&server, args).await,
            Command::Top(args) => top::run(&server, args).await,
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

/// Where and as whom to connect (global flags).
pub struct Server {
    url: String,
    token: String,
    ca: Option<std::path::PathBuf>,
    insecure: bool,
}

/// Connects to the broker, naming this tool in the handshake.
async fn connect(server: &Server) -> anyhow::Result<rtc_client::Client> {
    let options = rtc_client::ConnectOptions {
        client_name: format!("rtc-cli/{}", env!("CARGO_PKG_VERSION")),
        token: server.token.clone(),
        ca_file: server.ca.clone(),
        insecure: server.insecure,
        ..Default::default()
    };
    Ok(rtc_client::Client::connect_with(&server.url, options).await?)
}
