//! `rtc-cli pub TOPIC [MESSAGE] [--count N] [--header K=V]...`
//!
//! With MESSAGE, publishes it N times (default once). Without it, publishes each line of
//! stdin as one message (at most N lines when `--count` is given). Every publish waits for
//! the broker's acknowledgement, so the command exits 0 only when the broker accepted
//! everything, and the first refusal ends it with the broker's error.

use anyhow::Context;
use clap::Args;
use rtc_client::PublishMessage;
use tokio::io::AsyncBufReadExt;

/// Arguments of `rtc-cli pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Topic to publish to (dot-separated, no wildcards).
    topic: String,
    /// The payload. Without it, each line read from stdin is one message.
    message: Option<String>,
    /// Publish MESSAGE this many times; with stdin, publish at most this many lines.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// A header to attach, as KEY=VALUE; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "K=V", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl PubArgs {
    fn message(&self, payload: impl Into<bytes::Bytes>) -> PublishMessage {
        self.headers
            .iter()
            .fold(PublishMessage::new(&self.topic, payload), |m, (k, v)| {
                m.header(k, v)
            })
    }
}

/// Runs `rtc-cli pub`.
pub async fn run(server: &str, args: PubArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let result = publish_all(&client, &args).await;
    client.close().await;
    result
}

async fn publish_all(client: &rtc_client::Client, args: &PubArgs) -> anyhow::Result<()> {
    match &args.message {
        Some(text) => {
            let payload = bytes::Bytes::copy_from_slice(text.as_bytes());
            for i in 0..args.count.unwrap_or(1) {
                client
                    .publish_message(args.message(payload.clone()))
                    .await
                    .with_context(|| format!("publish #{} to {:?}", i + 1, args.topic))?;
            }
        }
        None => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut sent = 0u64;
            while args.count.is_none_or(|n| sent < n) {
                let Some(line) = lines.next_line().await.context("reading stdin")? else {
                    break;
                };
                client
                    .publish_message(args.message(line))
                    .await
                    .with_context(|| {
                        format!("publish of stdin line {} to {:?}", sent + 1, args.topic)
                    })?;
                sent += 1;
            }
        }
    }
    Ok(())
}
