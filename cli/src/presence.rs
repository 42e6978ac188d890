//! `rtc-cli presence TOPIC [--count]`: who is in a room.
//!
//! Prints one JSON object per member (user, info, connections, state), in order of
//! user, fetching every page; with `--count`, one line `MEMBERS CONNECTIONS`.

use clap::Args;
use serde_json::json;

/// Arguments of `rtc-cli presence`.
#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// The room (a topic).
    topic: String,
    /// Print only the number of members and of their connections.
    #[arg(long)]
    count: bool,
}

/// Members fetched per page.
const PAGE: u32 = 1000;

/// Runs `rtc-cli presence`.
pub async fn run(server: &crate::Server, args: PresenceArgs) -> anyhow::Result<()> {
    let client = crate::connect(server).await?;
    if args.count {
        let (members, connections) = client.presence_count(&args.topic).await?;
        println!("{members} {connections}");
        client.close().await;
        return Ok(());
    }
    let mut after = String::new();
    loop {
        let page = client.presence(&args.topic, &after, PAGE).await?;
        for m in &page.list {
            let info: serde_json::Value = serde_json::from_str(&m.info).unwrap_or(json!(m.info));
            let line = json!({
                "user": m.user,
                "info": info,
                "connections": m.connections,
                "state": m.state,
            });
            println!("{line}");
        }
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    client.close().await;
    Ok(())
}
