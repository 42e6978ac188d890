//! `rtc-cli req TOPIC MESSAGE [--timeout DUR]` and
//! `rtc-cli reply TOPIC [--group NAME] [--count N] (--echo | --command CMD)`.
//!
//! `req` sends one request and prints the reply's payload and a newline on stdout; with
//! nobody subscribed it exits 1 with `NO_RESPONDERS` at once, and with no reply in time
//! with `TIMEOUT`.
//!
//! `reply` answers the requests to TOPIC (a pattern), in queue group NAME if given, so
//! that several `reply` processes share them. It says `replying on TOPIC` on stderr once
//! subscribed. `--echo` answers with the request's own payload; `--command CMD` runs
//! `sh -c CMD` per request with the payload on its stdin and answers with its stdout (a
//! command that fails answers with nothing, and the failure is printed on stderr). With
//! `--count N` it exits 0 after N answers. Messages published to TOPIC that are not
//! requests are passed over.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncWriteExt;

/// Arguments of `rtc-cli req`.
#[derive(Debug, Args)]
pub struct ReqArgs {
    /// Topic to send the request to.
    topic: String,
    /// The request's payload.
    message: String,
    /// How long to wait for the reply.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Arguments of `rtc-cli reply`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("answer").required(true).args(["echo", "command"])))]
pub struct ReplyArgs {
    /// Pattern whose requests to answer.
    topic: String,
    /// Share the requests with the other responders of this queue group.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Exit after this many answers.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Answer with the request's payload.
    #[arg(long)]
    echo: bool,
    /// Answer with the stdout of `sh -c CMD`, given the request's payload on stdin.
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
}

/// Runs `rtc-cli req`.
pub async fn run_req(server: &crate::Server, args: ReqArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let response = client
        .request(args.topic.as_str(), args.message, args.timeout)
        .await?;
    let mut out = tokio::io::stdout();
    out.write_all(&response.payload).await?;
    out.write_all(b"\n").await?;
    out.flush().await?;
    client.close().await;
    Ok(())
}

/// Runs `rtc-cli reply`.
pub async fn run_reply(server: &crate::Server, args: ReplyArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let options = rtc_client::SubscribeOptions {
        group: args.group.clone(),
        ..Default::default()
    };
    let mut sub = client.subscribe_with(&args.topic, options).await?;
    eprintln!("replying on {}", args.topic);
    let mut answered = 0u64;
    while args.count.is_none_or(|n| answered < n) {
        let Some(request) = crate::subscribe::next_or_stop(&client, &mut sub).await? else {
            break;
        };
        if request.reply_to.is_empty() {
            continue;
        }
        let answer = match &args.command {
            Some(cmd) => run_command(cmd, &request.payload).await,
            None => request.payload.clone(),
        };
        // A request that timed out meanwhile is only worth a line.
        if let Err(e) = client.reply_confirmed(&request, answer).await {
            eprintln!("rtc-cli: reply to a request on {}: {e}", request.topic);
        }
        answered += 1;
    }
    client.close().await;
    Ok(())
}

/// The stdout of `sh -c cmd` given `input`; empty (with a line on stderr) if it fails.
async fn run_command(cmd: &str, input: &Bytes) -> Bytes {
    let run = async {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start sh")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let input = input.clone();
        // Written while the output is read, so a large payload cannot deadlock.
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let out = child.wait_with_output().await?;
        let _ = feed.await;
        anyhow::ensure!(out.status.success(), "{cmd:?} exited with {}", out.status);
        Ok::<_, anyhow::Error>(Bytes::from(out.stdout))
    };
    match run.await {
        Ok(out) => out,
        Err(e) => {
            eprintln!("rtc-cli: {e:#}");
            Bytes::new()
        }
    }
}
