//! `rtc-cli consumer ls TOPIC` and `rtc-cli consumer info TOPIC NAME`: the durable
//! consumers of a topic, with ack floor, pending, redelivered and dead-lettered counts.

use std::io::Write;

use clap::{Args, Subcommand};
use rtc_client::ConsumerInfo;

/// Arguments of `rtc-cli consumer`.
#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    command: ConsumerCommand,
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
}

/// Runs `rtc-cli consumer ...`.
pub async fn run(server: &crate::Server, args: ConsumerArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ConsumerCommand::Ls { topic } => {
            let consumers = client.list_consumers(&topic).await?;
            writeln!(
                out,
                "{:<24} {:>10} {:>10} {:>8} {:>11} {:>13} {:>7}",
                "NAME",
                "ACK_FLOOR",
                "NEXT_SEQ",
                "PENDING",
                "REDELIVERED",
                "DEAD_LETTERED",
                "MEMBERS"
            )?;
            for c in &consumers {
                writeln!(
                    out,
                    "{:<24} {:>10} {:>10} {:>8} {:>11} {:>13} {:>7}",
                    c.name,
                    c.ack_floor,
                    c.next_seq,
                    c.pending,
                    c.redelivered,
                    c.dead_lettered,
                    c.members
                )?;
            }
        }
        ConsumerCommand::Info { topic, name } => {
            let c = client.consumer_info(&topic, &name).await?;
            write_info(&mut out, &c)?;
        }
    }
    drop(out);
    client.close().await;
    Ok(())
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
