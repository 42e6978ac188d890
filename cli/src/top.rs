//! `rtc-cli top [--http URL] [--count N] [--json]`: the broker's figures refreshed every
//! second in the terminal, like `nats top` — uptime, connections, messages per second,
//! stored bytes, then the busiest connections and the largest topics. It reads the
//! admin API (`/v1/admin/stats`, `connections`, `topics`) with the global `--token`, so
//! it needs an admin token on a broker with users. `--json` prints one object per
//! refresh instead (`{"stats", "connections", "topics"}`).
//!
//! The requests are plain HTTP/1.1 over a TCP socket (one per request, `Connection:
//! close`): three GETs a second need no HTTP client library. `https://` is not
//! supported yet.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Arguments of `rtc-cli top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The broker's HTTP gateway.
    #[arg(long, env = "RTC_HTTP", default_value = "http://127.0.0.1:7401")]
    http: String,
    /// Refresh this many times, then exit (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Rows of connections and topics shown.
    #[arg(long, default_value_t = 15)]
    rows: usize,
    /// One JSON object per refresh instead of the screen.
    #[arg(long)]
    json: bool,
}

/// Runs `rtc-cli top`.
pub async fn run(server: &crate::Server, args: TopArgs) -> anyhow::Result<()> {
    let addr = args
        .http
        .strip_prefix("http://")
        .ok_or_else(|| {
            anyhow!("--http must be an http:// URL (https is not supported by top yet)")
        })?
        .trim_end_matches('/')
        .to_string();
    let token = server.token.as_str();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown = 0u64;
    while args.count.is_none_or(|n| shown < n) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let stats = get(&addr, "/v1/admin/stats", token).await?;
        let conns = get(&addr, "/v1/admin/connections", token).await?;
        let topics = get(&addr, "/v1/admin/topics", token).await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            let mut stats = stats;
            if let Some(s) = stats.as_object_mut() {
                s.remove("history");
            }
            let v = serde_json::json!({
                "stats": stats,
                "connections": conns["connections"],
                "topics": topics["topics"],
            });
            writeln!(out, "{v}")?;
        } else {
            // Clear the screen and go home, as top does.
            write!(out, "\x1b[2J\x1b[H")?;
            screen(&mut out, &stats, &conns, &topics, args.rows)?;
        }
        out.flush()?;
        shown += 1;
    }
    Ok(())
}

/// `GET path` with the token; the JSON body of a 200, or the broker's error.
async fn get(addr: &str, path: &str, token: &str) -> anyhow::Result<Value> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the broker's HTTP gateway at {addr}"))?;
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow!("{addr}{path}: no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{addr}{path}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status != "200" {
        let code = body["code"].as_str().unwrap_or("HTTP");
        let message = body["message"].as_str().unwrap_or("");
        bail!("{path}: {status} {code}: {message}");
    }
    Ok(body)
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn screen(
    out: &mut impl Write,
    stats: &Value,
    conns: &Value,
    topics: &Value,
    rows: usize,
) -> std::io::Result<()> {
    writeln!(
        out,
        "rtc {}  up {}s  connections {}  in {}/s  out {}/s  dropped {}  topics {}  stored {} B",
        stats["version"].as_str().unwrap_or("?"),
        num(&stats["uptime_s"]),
        num(&stats["connections"]),
        num(&stats["messages_in_per_s"]),
        num(&stats["messages_out_per_s"]),
        num(&stats["dropped"]),
        num(&stats["topics"]),
        num(&stats["stored_bytes"]),
    )?;
    writeln!(out)?;
    let mut list: Vec<&Value> = conns["connections"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    list.sort_by_key(|c| std::cmp::Reverse(num(&c["messages_out"]) + num(&c["messages_in"])));
    writeln!(
        out,
        "{:>6} {:<5} {:<21} {:<12} {:>5} {:>7} {:>10} {:>10} {:>8}",
        "ID", "TRANS", "PEER", "USER", "SUBS", "QUEUED", "IN", "OUT", "DROPPED"
    )?;
    for c in list.iter().take(rows) {
        writeln!(
            out,
            "{:>6} {:<5} {:<21} {:<12} {:>5} {:>7} {:>10} {:>10} {:>8}",
            num(&c["id"]),
            c["transport"].as_str().unwrap_or(""),
            c["peer"].as_str().unwrap_or(""),
            c["user"].as_str().unwrap_or(""),
            c["subscriptions"].as_object().map_or(0, |s| s.len()),
            num(&c["queued_frames"]),
            num(&c["messages_in"]),
            num(&c["messages_out"]),
            num(&c["dropped"]),
        )?;
    }
    writeln!(out)?;
    let mut list: Vec<&Value> = topics["topics"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    list.sort_by_key(|t| std::cmp::Reverse(num(&t["messages"])));
    writeln!(
        out,
        "{:<32} {:<9} {:>10} {:>10} {:>12}",
        "TOPIC", "STORAGE", "LAST SEQ", "MESSAGES", "BYTES"
    )?;
    for t in list.iter().take(rows) {
        writeln!(
            out,
            "{:<32} {:<9} {:>10} {:>10} {:>12}",
            t["name"].as_str().unwrap_or(""),
            t["storage"].as_str().unwrap_or(""),
            num(&t["last_seq"]),
            num(&t["messages"]),
            num(&t["bytes"]),
        )?;
    }
    Ok(())
}
