//! `rtc-bench soak`: a long run against the broker as its own process, to see what a log
//! of millions of messages does to it. It starts `rtc-broker` on a data directory,
//! publishes `--count` acknowledged messages with `--window` in flight into `--topics`
//! topics, and prints a row every `--every` messages: the rate of that slice and of the
//! run so far, the disk the data directory uses (allocated blocks) against the bytes the
//! broker says it stores (TopicInfo.bytes, the encoded messages), and the broker's
//! resident memory. Then it stops the broker cleanly (SIGTERM), starts it again and
//! times the start to its `listening tcp` line, reads its memory, checks every message
//! is still there, and does the same after a SIGKILL.
//!
//! ```text
//! rtc-bench soak --count 10000000                # fsync never, 128 B, W = 256, one topic
//! rtc-bench soak --count 3000000 --topics 16 --store-cache 67108864 --data-dir /tmp/soak
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rtc_client::{Client, PublishMessage, Topic, TopicConfig};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Messages to publish.
    #[arg(long, default_value_t = 10_000_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Publishes in flight.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Topics the messages are spread over, in turn.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// The broker's fsync policy (`always`, `interval:MS`, `never`).
    #[arg(long, default_value = "never")]
    fsync: String,
    /// The broker's storage cache in bytes (`store_cache`) [default: the broker's].
    #[arg(long)]
    store_cache: Option<u64>,
    /// The broker's `store_engine` for the new data dir (`segments`, `sled`) [default: the broker's].
    #[arg(long)]
    store_engine: Option<String>,
    /// Each topic's dedup window (created with it), e.g. `1s` [default: the broker's, 2 min].
    #[arg(long, value_parser = humantime::parse_duration)]
    dedup_window: Option<Duration>,
    /// Each topic's retention by count (created with it) [default: none].
    #[arg(long)]
    max_msgs: Option<u64>,
    /// A row every this many messages.
    #[arg(long, default_value_t = 1_000_000)]
    every: u64,
    /// The rtc-broker binary [default: the one beside rtc-bench].
    #[arg(long)]
    broker: Option<PathBuf>,
    /// Data directory, kept afterwards [default: a temporary one, removed].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The broker as a child process.
struct BrokerProcess {
    child: Child,
    url: String,
    /// When it was spawned.
    began: Instant,
    /// From spawn to its `listening tcp` line.
    started_in: Duration,
}

impl BrokerProcess {
    fn start(bin: &Path, dir: &Path, config: &Path) -> anyhow::Result<BrokerProcess> {
        let began = Instant::now();
        let mut child = Command::new(bin)
            .args(["--tcp", "127.0.0.1:0", "--http", "off", "--log", "warn"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("the broker's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line the broker prints, for as long as it runs, so that it never
        // writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening tcp ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(300))
            .context("the broker did not print its listening line within 300 s")?;
        Ok(BrokerProcess {
            child,
            url: format!("tcp://{addr}"),
            began,
            started_in: began.elapsed(),
        })
    }

    /// Resident memory, from /proc.
    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// SIGTERM, then waits for it to exit.
    fn stop(mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let exit = self.child.wait()?;
        ensure!(exit.success(), "the broker exited with {exit} on SIGTERM");
        Ok(began.elapsed())
    }

    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes allocated to the files under `dir` (what `du` counts).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn topic_names(n: usize) -> Vec<Topic> {
    (0..n.max(1))
        .map(|i| Topic::from(format!("soak.t{i}").as_str()))
        .collect()
}

/// Messages and bytes the broker stores over all the topics.
async fn stored(client: &Client, topics: &[Topic]) -> anyhow::Result<(u64, u64)> {
    let (mut messages, mut bytes) = (0, 0);
    for t in topics {
        let info = client.topic_info(t.as_str()).await?;
        messages += info.messages;
        bytes += info.bytes;
    }
    Ok((messages, bytes))
}

/// The broker beside this program (target/<profile>/, or its parent for a test binary
/// in target/<profile>/deps/).
fn default_broker() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let bin = dir.join("rtc-broker");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!("no rtc-broker beside {}: pass --broker", exe.display())
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let bin = match &args.broker {
        Some(b) => b.clone(),
        None => default_broker()?,
    };
    let temp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let config = dir.join("soak.toml");
    let mut toml = format!("fsync = {:?}\npublish_rate = 0\n", args.fsync);
    if let Some(cache) = args.store_cache {
        toml.push_str(&format!("store_cache = {cache}\n"));
    }
    if let Some(engine) = &args.store_engine {
        toml.push_str(&format!("store_engine = {engine:?}\n"));
    }
    std::fs::write(&config, toml)?;
    let topics = topic_names(args.topics);
    let data = dir.join("data");

    let broker = BrokerProcess::start(&bin, &dir, &config)?;
    println!(
        "soak: {} messages of {} B, W = {}, {} topic(s), fsync {}, store_engine {}, store_cache {}, dedup window {}, max_msgs {}; broker {} (started in {:.2} s)",
        args.count,
        args.payload,
        args.window,
        topics.len(),
        args.fsync,
        args.store_engine.as_deref().unwrap_or("default"),
        args.store_cache
            .map_or("default".to_string(), |c| c.to_string()),
        args.dedup_window
            .map_or("default".to_string(), |d| humantime::format_duration(d).to_string()),
        args.max_msgs.map_or("none".to_string(), |m| m.to_string()),
        bin.display(),
        broker.started_in.as_secs_f64()
    );
    println!();
    println!("| messages | msgs/s, this slice | msgs/s, so far | disk MB | stored MB | disk / stored | broker RSS MB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let client = Client::connect(&broker.url).await?;
    if args.dedup_window.is_some() || args.max_msgs.is_some() {
        let settings = TopicConfig {
            dedup_window: args.dedup_window,
            max_msgs: args.max_msgs,
            ..Default::default()
        };
        for t in &topics {
            client.create_topic(t.as_str(), &settings).await?;
        }
    }
    let expected = args.max_msgs.map_or(args.count, |max| {
        // Retention keeps the newest max_msgs of each topic.
        let per = args.count / topics.len() as u64;
        let extra = args.count % topics.len() as u64;
        (0..topics.len() as u64)
            .map(|i| (per + u64::from(i < extra)).min(max))
            .sum()
    });
    let body = bytes::Bytes::from(vec![b'x'; args.payload]);
    let started = Instant::now();
    let mut slice_start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let every = args.every.max(1);
    while acked < args.count {
        while sent < args.count && in_flight.len() < args.window.max(1) {
            let topic = topics[(sent % topics.len() as u64) as usize].clone();
            // Its own IDs, so that a restart can retry the last one (`restarted`).
            let m = PublishMessage::new(topic, body.clone()).msg_id(format!("soak-{sent}"));
            in_flight.push(client.publish_queued(m).await.context("publish")?);
            sent += 1;
        }
        let Some(ack) = in_flight.next().await else {
            break;
        };
        ack.context("publish")?;
        acked += 1;
        if acked % 100_000 == 0 {
            eprint!("\rsoak: {acked} of {} acknowledged", args.count);
        }
        if acked % every == 0 || acked == args.count {
            let slice = acked - (acked - 1) / every * every;
            let (_, bytes) = stored(&client, &topics).await?;
            let disk = disk_use(&data);
            eprint!("\r");
            println!(
                "| {acked} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} |",
                slice as f64 / slice_start.elapsed().as_secs_f64(),
                acked as f64 / started.elapsed().as_secs_f64(),
                mb(disk),
                mb(bytes),
                disk as f64 / bytes.max(1) as f64,
                mb(broker.rss()?)
            );
            slice_start = Instant::now();
        }
    }
    let (messages, _) = stored(&client, &topics).await?;
    ensure!(
        messages == expected,
        "the broker stores {messages} messages, not {expected}"
    );
    client.close().await;

    println!();
    println!(
        "| restart | stop s | start to listening s | to the answer to a retry s | broker RSS MB at listening | after the retry | messages after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let last = Retry {
        topic: topics[((args.count - 1) % topics.len() as u64) as usize].clone(),
        msg_id: format!("soak-{}", args.count - 1),
        window: args
            .dedup_window
            .unwrap_or(rtc_broker::topic::DEFAULT_DEDUP_WINDOW),
        acked: Instant::now(),
    };
    let stop = broker.stop()?;
    let again = BrokerProcess::start(&bin, &dir, &config)?;
    let row = restarted(&again, &topics, expected, &last).await?;
    println!("| after a clean stop | {:.2} | {row}", stop.as_secs_f64());
    again.kill()?;
    let third = BrokerProcess::start(&bin, &dir, &config)?;
    let row = restarted(&third, &topics, expected, &last).await?;
    println!("| after SIGKILL | — | {row}");
    third.stop()?;
    println!();
    println!(
        "data directory: {} MB at the end{}",
        mb(disk_use(&data)).round(),
        if args.data_dir.is_some() {
            format!(", kept in {}", dir.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The soak's last publish, retried after each restart.
struct Retry {
    topic: Topic,
    msg_id: String,
    /// Its topic's dedup window.
    window: Duration,
    /// When it was acknowledged (about).
    acked: Instant,
}

/// The rest of a restart's row: time to listening; to the answer to a retry of the
/// soak's last publish (the broker reads the dedup index back after it listens, and a
/// publish with a message ID waits for its topic's index; the retry must be answered as
/// a duplicate), when the retry is still within the dedup window; memory at listening
/// and after the retry; every message still stored.
async fn restarted(
    broker: &BrokerProcess,
    topics: &[Topic],
    count: u64,
    last: &Retry,
) -> anyhow::Result<String> {
    let rss_listening = broker.rss()?;
    let client = Client::connect(&broker.url).await?;
    let (messages, _) = stored(&client, topics).await?;
    ensure!(
        messages == count,
        "after the restart the broker stores {messages} messages, not {count}"
    );
    // A second to spare: the window's edge is the broker's clock, not ours.
    let retried = if last.acked.elapsed() + Duration::from_secs(1) < last.window {
        let retry = PublishMessage::new(last.topic.clone(), "retry").msg_id(last.msg_id.clone());
        let ack = client
            .publish_message(retry)
            .await
            .context("retry after the restart")?;
        ensure!(
            ack.duplicate,
            "the retry of {} was stored again after the restart",
            last.msg_id
        );
        format!("{:.2}", broker.began.elapsed().as_secs_f64())
    } else {
        "— (outside the window)".to_string()
    };
    let rss_after = broker.rss()?;
    client.close().await;
    Ok(format!(
        "{:.2} | {retried} | {:.0} | {:.0} | {messages} |",
        broker.started_in.as_secs_f64(),
        mb(rss_listening),
        mb(rss_after)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short soak against the workspace's broker binary, with topics of its own
    /// settings: publishes, restarts twice (clean and SIGKILL) and finds every message
    /// retention keeps (3 × 900) each time, or fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_soak_restarts_and_keeps_every_message() {
        let all = [
            "rtc-bench",
            "soak",
            "--count",
            "3000",
            "--every",
            "1000",
            "--topics",
            "3",
            "--window",
            "64",
        ];
        let args = match <crate::Cli as clap::Parser>::try_parse_from(all)
            .expect("valid arguments")
            .workload
        {
            crate::Workload::Soak(args) => args,
            _ => unreachable!("a soak command line"),
        };
        run(args).await.expect("every message kept across restarts");
    }

    #[test]
    fn disk_use_counts_allocated_bytes_under_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 10_000]).unwrap();
        let used = disk_use(dir.path());
        assert!((10_000..=20_000).contains(&used), "{used}");
    }
}
