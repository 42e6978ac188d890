//! `rtc-cli topic create|ls|info|rm|purge [--json]`: create a topic (or change its
//! retention), list the topics with what their logs hold, describe one, delete one,
//! remove its messages. With `--json`, one JSON object per topic (per line for `ls`),
//! with the same fields; durations in ms.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use rtc_client::{TopicConfig, TopicInfo};

/// Arguments of `rtc-cli topic`.
#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
    /// One JSON object per topic instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic, or change the retention and dedup settings of an existing one.
    Create(CreateArgs),
    /// List topics: storage, first/last seq, message count and bytes.
    Ls,
    /// Show one topic's settings and what its log holds.
    Info {
        /// Topic name.
        name: String,
    },
    /// Delete a topic: its messages, dedup entries and durable consumers (needs an
    /// admin token). Its subscribers are told; the name can be used again.
    Rm {
        /// Topic name.
        name: String,
    },
    /// Remove a topic's stored messages, all or all but the newest N (needs an admin
    /// token). Seqs are not reused.
    Purge {
        /// Topic name.
        name: String,
        /// Keep the newest N messages.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep: u64,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Topic name.
    name: String,
    /// Live fan-out only; nothing is stored.
    #[arg(long)]
    ephemeral: bool,
    /// Remove messages older than this (e.g. 7d, 12h, 30m).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    max_age: Option<Duration>,
    /// Keep at most this many messages.
    #[arg(long, value_name = "N")]
    max_msgs: Option<u64>,
    /// Keep at most this many bytes of messages.
    #[arg(long, value_name = "N")]
    max_bytes: Option<u64>,
    /// Ephemeral topics: deliver as QUIC datagrams to subscribers that ask (sub --datagrams).
    #[arg(long, requires = "ephemeral")]
    datagram: bool,
    /// Window in which a repeated message ID is not stored again [default: 2m].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    dedup_window: Option<Duration>,
}

/// Runs `rtc-cli topic ...`.
pub async fn run(server: &crate::Server, args: TopicArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        TopicCommand::Create(a) => {
            let config = TopicConfig {
                ephemeral: a.ephemeral,
                max_age: a.max_age,
                max_msgs: a.max_msgs,
                max_bytes: a.max_bytes,
                dedup_window: a.dedup_window,
                datagram: a.datagram,
            };
            let info = client.create_topic(&a.name, &config).await?;
            write_info(&mut out, &info, args.json)?;
        }
        TopicCommand::Ls => {
            let (topics, truncated) = client.list_topics().await?;
            if args.json {
                for t in &topics {
                    writeln!(out, "{}", json(t))?;
                }
            } else {
                table(&mut out, &topics)?;
            }
            if truncated {
                eprintln!("(list cut short: more topics than fit in one answer)");
            }
        }
        TopicCommand::Info { name } => {
            let info = client.topic_info(&name).await?;
            write_info(&mut out, &info, args.json)?;
        }
        TopicCommand::Rm { name } => {
            client.delete_topic(&name).await?;
            if args.json {
                writeln!(out, "{}", serde_json::json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted topic {name}")?;
            }
        }
        TopicCommand::Purge { name, keep } => {
            let info = client.purge_topic(&name, keep).await?;
            write_info(&mut out, &info, args.json)?;
        }
    }
    drop(out);
    client.close().await;
    Ok(())
}

/// The topics as a table.
fn table(out: &mut impl Write, topics: &[TopicInfo]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<40} {:<9} {:>10} {:>10} {:>10} {:>12}",
        "NAME", "STORAGE", "FIRST", "LAST", "MESSAGES", "BYTES"
    )?;
    for t in topics {
        writeln!(
            out,
            "{:<40} {:<9} {:>10} {:>10} {:>10} {:>12}",
            t.name,
            storage(&t.config),
            t.first_seq,
            t.last_seq,
            t.messages,
            t.bytes
        )?;
    }
    Ok(())
}

/// A topic as JSON: its info and settings, durations in ms (null for none).
fn json(t: &TopicInfo) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    serde_json::json!({
        "name": t.name,
        "storage": storage(&t.config),
        "first_seq": t.first_seq,
        "last_seq": t.last_seq,
        "messages": t.messages,
        "bytes": t.bytes,
        "epoch": t.epoch,
        "max_age_ms": ms(t.config.max_age),
        "max_msgs": t.config.max_msgs,
        "max_bytes": t.config.max_bytes,
        "dedup_window_ms": ms(t.config.dedup_window),
        "datagram": t.config.datagram,
    })
}

fn storage(c: &TopicConfig) -> &'static str {
    if c.ephemeral {
        "ephemeral"
    } else {
        "durable"
    }
}

fn limit(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn duration(v: Option<Duration>) -> String {
    v.map_or_else(
        || "none".to_string(),
        |d| humantime::format_duration(d).to_string(),
    )
}

fn write_info(out: &mut impl Write, t: &TopicInfo, as_json: bool) -> std::io::Result<()> {
    if as_json {
        return writeln!(out, "{}", json(t));
    }
    writeln!(out, "name:         {}", t.name)?;
    writeln!(out, "storage:      {}", storage(&t.config))?;
    writeln!(out, "first seq:    {}", t.first_seq)?;
    writeln!(out, "last seq:     {}", t.last_seq)?;
    writeln!(out, "messages:     {}", t.messages)?;
    writeln!(out, "bytes:        {}", t.bytes)?;
    writeln!(out, "epoch:        {}", t.epoch)?;
    writeln!(out, "max age:      {}", duration(t.config.max_age))?;
    writeln!(out, "max msgs:     {}", limit(t.config.max_msgs))?;
    writeln!(out, "max bytes:    {}", limit(t.config.max_bytes))?;
    writeln!(out, "dedup window: {}", duration(t.config.dedup_window))
}
