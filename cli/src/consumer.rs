//! `rtc-cli consumer ls TOPIC` and `rtc-cli consumer info TOPIC NAME` (`--json` for
//! one JSON object per consumer): the durable consumers of a topic, with ack floor,
//! pending, redelivered and dead-lettered counts. `rtc-cli consumer rm TOPIC NAME`
//! deletes one.

use std::io::Write;

use clap::{Args, Subcommand};
use rtc_client::ConsumerInfo;

/// Arguments of `rtc-cli consumer`.
#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    command: ConsumerCommand,
    /// One JSON object per consumer instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ConsumerCommand {
    /// List the durable consumers of a topic.
    Ls {
        /// Topic name.
        topic: String,
    },
    /// Show one durable consumer.
    Info {
        /// Topic name.
        topic: String,
        /// Consumer name.
        name: String,
    },
    /// Delete a durable consumer and its state (needs an admin token); its members'
    /// subscriptions end.
    Rm {
        /// Topic name.
        topic: String,
        /// Consumer name.
        name: String,
    },
}

/// Runs `rtc-cli consumer ...`.
pub async fn run(server: &crate::Server, args: ConsumerArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ConsumerCommand::Ls { topic } => {
            let consumers = client.list_consumers(&topic).await?;
            if args.json {
                for c in &consumers {
                    writeln!(out, "{}", json(c))?;
                }
            } else {
                table(&mut out, &consumers)?;
            }
        }
        ConsumerCommand::Info { topic, name } => {
            let c = client.consumer_info(&topic, &name).await?;
            if args.json {
                writeln!(out, "{}", json(&c))?;
            } else {
                write_info(&mut out, &c)?;
            }
        }
        ConsumerCommand::Rm { topic, name } => {
            client.delete_consumer(&topic, &name).await?;
            if args.json {
                let v = serde_json::json!({ "deleted": { "topic": topic, "name": name } });
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "deleted consumer {name} of {topic}")?;
            }
        }
    }
    drop(out);
    client.close().await;
    Ok(())
}

/// The consumers as a table.
fn table(out: &mut impl Write, consumers: &[ConsumerInfo]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>8} {:>11} {:>13} {:>7}",
        "NAME", "ACK_FLOOR", "NEXT_SEQ", "PENDING", "REDELIVERED", "DEAD_LETTERED", "MEMBERS"
    )?;
    for c in consumers {
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>8} {:>11} {:>13} {:>7}",
            c.name, c.ack_floor, c.next_seq, c.pending, c.redelivered, c.dead_lettered, c.members
        )?;
    }
    Ok(())
}

/// A consumer as JSON, with the fields of its table.
fn json(c: &ConsumerInfo) -> serde_json::Value {
    serde_json::json!({
        "topic": c.topic,
        "name": c.name,
        "ack_floor": c.ack_floor,
        "next_seq": c.next_seq,
        "pending": c.pending,
        "redelivered": c.redelivered,
        "dead_lettered": c.dead_lettered,
        "members": c.members,
        "dead_letter_topic": c.dead_letter_topic,
    })
}

fn write_info(out: &mut impl Write, c: &ConsumerInfo) -> std::io::Result<()> {
    writeln!(out, "topic:             {}", c.topic)?;
    writeln!(out, "name:              {}", c.name)?;
    writeln!(out, "ack floor:         {}", c.ack_floor)?;
    writeln!(out, "next seq:          {}", c.next_seq)?;
    writeln!(out, "pending:           {}", c.pending)?;
    writeln!(out, "redelivered:       {}", c.redelivered)?;
    writeln!(out, "dead-lettered:     {}", c.dead_lettered)?;
    writeln!(out, "members:           {}", c.members)?;
    writeln!(out, "dead-letter topic: {}", c.dead_letter_topic)
}
