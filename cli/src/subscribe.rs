//! `rtc-cli sub PATTERN [--count N] [--json]`
//!
//! Subscribes, says so on stderr (`subscribed to PATTERN`, so scripts can wait for it),
//! then prints each message on stdout as it arrives: the raw payload and a newline, or
//! with `--json` one JSON object per line. With `--count N` it exits 0 after N messages.
//! If the connection is lost it exits 1 with the reason. `--from POSITION` replays stored
//! messages first (`first`, `last`, `seq:N`, `time:RFC3339`, `time:-5m`).

use clap::Args;
use std::io::Write;

use crate::output;

/// Arguments of `rtc-cli sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Pattern to subscribe to: `*` matches one token, `>` all remaining tokens.
    pattern: String,
    /// Exit after this many messages.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Print one JSON object per message (topic, payload, headers, seq, timestamp, id).
    #[arg(long)]
    json: bool,
    /// Start position in durable topics: new, first, last, seq:N, time:RFC3339, time:-5m.
    #[arg(long, value_name = "POSITION", default_value = "new")]
    from: rtc_client::StartAt,
}

/// Runs `rtc-cli sub`.
pub async fn run(server: &str, args: SubArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let options = rtc_client::SubscribeOptions { start: args.from };
    let mut sub = client.subscribe_with(&args.pattern, options).await?;
    eprintln!("subscribed to {}", args.pattern);
    let mut received = 0u64;
    while args.count.is_none_or(|n| received < n) {
        let next = tokio::select! {
            m = sub.next() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(message) = next else {
            let reason = client
                .closed_reason()
                .unwrap_or_else(|| "unknown reason".into());
            anyhow::bail!("connection closed: {reason}");
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", output::json(&message))?;
        } else {
            out.write_all(&message.payload)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        received += 1;
    }
    client.close().await;
    Ok(())
}
