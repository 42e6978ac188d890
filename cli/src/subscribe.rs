//! `rtc-cli sub PATTERN [--count N] [--json] [--group NAME] [--presence JSON]`
//!
//! Subscribes, says so on stderr (`subscribed to PATTERN`, so scripts can wait for it),
//! then prints each message on stdout as it arrives: the raw payload and a newline, or
//! with `--json` one JSON object per line. With `--count N` it exits 0 after N messages.
//! If the connection is lost it exits 1 with the reason. `--from POSITION` replays stored
//! messages first (`first`, `last`, `seq:N`, `time:RFC3339`, `time:-5m`).
//!
//! `--durable NAME` joins the broker-side durable consumer NAME on TOPIC (created on first
//! use, from `--from`, default `first`). With `--ack` each message is acknowledged after
//! it is printed, and the broker's confirmation is awaited, so when the command exits the
//! messages it printed will not be delivered to NAME again; with `--count N` it asks for
//! no more than N messages in flight. Messages the broker delivered but the command did
//! not print (the window refills as it acks) go back to the consumer when it exits and
//! are redelivered to the next member. Without `--ack`, delivery itself settles each
//! message.

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
    /// Start position in durable topics: new, first, last, seq:N, time:RFC3339, time:-5m
    /// [default: new; with --durable, first for a new consumer].
    #[arg(long, value_name = "POSITION")]
    from: Option<rtc_client::StartAt>,
    /// Join the durable consumer NAME (PATTERN must then be one topic).
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,
    /// Acknowledge each message after printing it (needs --durable).
    #[arg(long, requires = "durable")]
    ack: bool,
    /// Over quic://: take messages of datagram topics as QUIC datagrams.
    #[arg(long)]
    datagrams: bool,
    /// Share the messages with the other subscribers of this queue group (live only).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["durable", "from"])]
    group: Option<String>,
    /// Join the presence of the room PATTERN names (one topic), with this JSON as the
    /// member's info ('{}' for none); `rtc-cli presence` shows who is there.
    #[arg(long, value_name = "JSON", conflicts_with = "durable")]
    presence: Option<String>,
}

/// The next message of `sub`; `None` on Ctrl-C; the reason when the connection closed.
pub async fn next_or_stop(
    client: &rtc_client::Client,
    sub: &mut rtc_client::Subscription,
) -> anyhow::Result<Option<rtc_client::Message>> {
    let next = tokio::select! {
        m = sub.next() => m,
        _ = tokio::signal::ctrl_c() => return Ok(None),
    };
    match next {
        Some(message) => Ok(Some(message)),
        None => {
            let reason = client
                .closed_reason()
                .unwrap_or_else(|| "unknown reason".into());
            anyhow::bail!("connection closed: {reason}")
        }
    }
}

/// Runs `rtc-cli sub`.
pub async fn run(server: &crate::Server, args: SubArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let consumer = args.durable.as_ref().map(|name| {
        let mut c = rtc_client::ConsumerOptions::new(name.clone());
        c.explicit_ack = args.ack;
        if let Some(n) = args.count {
            c.max_in_flight = Some(n.clamp(1, u64::from(u32::MAX)) as u32);
        }
        c
    });
    let start = match (args.from, &consumer) {
        (Some(p), _) => p,
        (None, Some(_)) => rtc_client::StartAt::First,
        (None, None) => rtc_client::StartAt::New,
    };
    let options = rtc_client::SubscribeOptions {
        start,
        consumer,
        datagrams: args.datagrams,
        group: args.group,
        presence: args.presence.map(|info| rtc_client::PresenceJoin {
            info,
            events: false,
        }),
        epoch: None,
    };
    let mut sub = client.subscribe_with(&args.pattern, options).await?;
    eprintln!("subscribed to {}", args.pattern);
    let mut received = 0u64;
    while args.count.is_none_or(|n| received < n) {
        let Some(message) = next_or_stop(&client, &mut sub).await? else {
            break;
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", output::json(&message))?;
        } else {
            out.write_all(&message.payload)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        if args.ack {
            sub.ack(&message).await?;
        }
        received += 1;
    }
    client.close().await;
    Ok(())
}
