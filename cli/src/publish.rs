//! `rtc-cli pub TOPIC [MESSAGE] [--count N] [--header K=V]...`
//!
//! With MESSAGE, publishes it N times (default once). Without it, publishes each line of
//! stdin as one message (at most N lines when `--count` is given). Every publish waits for
//! the broker's acknowledgement, so the command exits 0 only when the broker accepted
//! everything, and the first refusal ends it with the broker's error. `--ack` prints each
//! acknowledgement (`seq=N`, plus ` duplicate` when the broker had the message ID
//! already). `--id ID` sets the message ID; when more than one message is sent, the
//! messages get `ID-1`, `ID-2`, … so that they stay distinct.

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
    /// Print each acknowledgement: `seq=N` (and ` duplicate`).
    #[arg(long)]
    ack: bool,
    /// Message ID for deduplication (several messages get ID-1, ID-2, ...).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl PubArgs {
    /// The `n`th message (from 1) with this payload.
    fn message(&self, n: u64, payload: impl Into<bytes::Bytes>) -> PublishMessage {
        let mut m = self
            .headers
            .iter()
            .fold(PublishMessage::new(&self.topic, payload), |m, (k, v)| {
                m.header(k, v)
            });
        if let Some(id) = &self.id {
            m = m.msg_id(if self.single() {
                id.clone()
            } else {
                format!("{id}-{n}")
            });
        }
        m
    }

    /// Whether exactly one message will be sent.
    fn single(&self) -> bool {
        self.message.is_some() && self.count.unwrap_or(1) == 1
    }

    /// Publishes the `n`th message and prints its acknowledgement if asked to.
    async fn send(
        &self,
        client: &rtc_client::Client,
        n: u64,
        payload: impl Into<bytes::Bytes>,
    ) -> anyhow::Result<()> {
        let ack = client
            .publish_message(self.message(n, payload))
            .await
            .with_context(|| format!("publish #{n} to {:?}", self.topic))?;
        if self.ack {
            println!(
                "seq={}{}",
                ack.seq,
                if ack.duplicate { " duplicate" } else { "" }
            );
        }
        Ok(())
    }
}

/// Runs `rtc-cli pub`.
pub async fn run(server: &crate::Server, args: PubArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let result = publish_all(&client, &args).await;
    client.close().await;
    result
}

async fn publish_all(client: &rtc_client::Client, args: &PubArgs) -> anyhow::Result<()> {
    match &args.message {
        Some(text) => {
            let payload = bytes::Bytes::copy_from_slice(text.as_bytes());
            for n in 1..=args.count.unwrap_or(1) {
                args.send(client, n, payload.clone()).await?;
            }
        }
        None => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut sent = 0u64;
            while args.count.is_none_or(|n| sent < n) {
                let Some(line) = lines.next_line().await.context("reading stdin")? else {
                    break;
                };
                sent += 1;
                args.send(client, sent, line).await?;
            }
        }
    }
    Ok(())
}
