//! The `connections` workload: open C connections to a running `rtc-broker`, each
//! completing the handshake and subscribing (raw protocol, so the load generator stays
//! light), then measure the broker's resident memory per connection (from
//! /proc/PID/status) and the time one published message takes to reach all of them.
//! With `--transport ws` the connections are WebSockets to the HTTP gateway
//! (`rtc.v1.proto`, one frame per binary message); the broadcast is published over TCP.
//!
//! With `--presence` each connection also joins the presence of one room (with events),
//! and instead of a broadcast one more connection joins: the figure is the time until
//! every member has heard of it (a `JOIN` event, or above the broker's
//! `presence_events_max` a `COUNT` one), and the memory per connection includes its
//! membership.
//!
//! One process may hold about 20 000 descriptors on these machines, so for more than
//! ~19 000 connections run several `rtc-bench connections` processes against the same
//! broker (`--hold` keeps them open).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args;
use futures_util::StreamExt;
use rtc_proto::codec::encode_frame;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{Frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// Arguments of `rtc-bench connections`.
#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    /// The broker (TCP).
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: String,
    /// The broker's process id, to read its memory.
    #[arg(long)]
    pid: u32,
    /// Connections to open.
    #[arg(long, default_value_t = 5_000)]
    count: usize,
    /// Keep the connections open this long after measuring (for multi-process runs).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// `tcp`, or `ws` for WebSockets to the HTTP gateway at `--http`.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// The broker's HTTP gateway, for `--transport ws`.
    #[arg(long, default_value = "127.0.0.1:7401")]
    http: String,
    /// Join a room's presence with each connection, and time one more join instead of a
    /// broadcast.
    #[arg(long)]
    presence: bool,
}

/// One idle subscribed connection, waiting for the broadcast.
enum Conn {
    Tcp(
        FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
        // Held so the connection stays open.
        #[allow(dead_code)] tokio::net::tcp::OwnedWriteHalf,
    ),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
}

impl Conn {
    /// The next frame the broker sends.
    async fn next(&mut self) -> anyhow::Result<Frame> {
        use prost::Message as _;
        match self {
            Conn::Tcp(frames, _) => match frames.next().await {
                Some(Ok(f)) => Ok(f),
                other => bail!("{other:?}"),
            },
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                        return Ok(Frame::decode(b)?)
                    }
                    Some(Ok(_)) => continue,
                    other => bail!("{other:?}"),
                }
            },
        }
    }
}

/// Opens connection `i` and completes its handshake and subscription.
async fn open(
    args: &ConnectionsArgs,
    i: usize,
    hello: &Bytes,
    subscribe: &Bytes,
) -> anyhow::Result<Conn> {
    let mut conn = match args.transport.as_str() {
        "tcp" => {
            let mut s = TcpStream::connect(&args.addr)
                .await
                .with_context(|| format!("connection {i}"))?;
            s.write_all(hello).await?;
            s.write_all(subscribe).await?;
            let (r, w) = s.into_split();
            Conn::Tcp(FramedRead::new(r, FrameCodec::default()), w)
        }
        "ws" => {
            use futures_util::SinkExt;
            use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
            let mut request = format!("ws://{}/v1/ws", args.http).into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "rtc.v1.proto".parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(request)
                .await
                .with_context(|| format!("connection {i}"))?;
            // Without the length prefix: one frame per message.
            for f in [hello, subscribe] {
                ws.send(Message::Binary(f.slice(4..))).await?;
            }
            Conn::Ws(Box::new(ws))
        }
        other => bail!("--transport {other:?}: tcp or ws"),
    };
    // Welcome, then SubAck.
    for _ in 0..2 {
        conn.next()
            .await
            .with_context(|| format!("connection {i}: handshake"))?;
    }
    Ok(conn)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("VmRSS")
}

fn frame(op: Op) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(&Frame::from_op(op), usize::MAX, &mut buf).expect("small frame");
    buf.freeze()
}

/// Runs the workload and prints a markdown table.
pub async fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    let before = rss_kib(args.pid)?;
    let hello = frame(Op::Hello(v1::Hello {
        protocol_version: rtc_proto::PROTOCOL_VERSION,
        client_name: "rtc-bench".into(),
        auth_token: String::new(),
    }));
    let subscribe = frame(Op::Subscribe(v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: "bench.broadcast".into(),
        presence: args.presence.then(|| v1::PresenceJoin {
            info: r#"{"bench":true}"#.into(),
            events: true,
        }),
        ..Default::default()
    }));
    let started = Instant::now();
    let mut conns = Vec::with_capacity(args.count);
    for i in 0..args.count {
        conns.push(open(&args, i, &hello, &subscribe).await?);
    }
    let opened = started.elapsed();
    // Idle means idle: past the 500 ms after which the broker releases an idle
    // connection's spare buffers (`outbound::TRIM_AFTER`), for the last one opened too.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(args.pid)?;
    // One broadcast (or one more member); every connection must hear of it.
    let mut publisher = TcpStream::connect(&args.addr).await?;
    publisher.write_all(&hello).await?;
    let sent = Instant::now();
    let news = if args.presence {
        subscribe.clone()
    } else {
        frame(Op::Publish(v1::Publish {
            req_id: 0,
            topic: "bench.broadcast".into(),
            payload: Bytes::from_static(b"hello, everyone"),
            ..Default::default()
        }))
    };
    publisher.write_all(&news).await?;
    let members = args.count as u64 + 1;
    let mut received = 0;
    let mut readers = futures_util::stream::FuturesUnordered::new();
    for conn in conns.iter_mut() {
        readers.push(async move {
            // Past the events of the joins before this one.
            loop {
                match conn.next().await? {
                    Frame {
                        op: Some(Op::Deliver(_)),
                    } => return Ok(()),
                    Frame {
                        op: Some(Op::PresenceEvent(e)),
                    } if e.members == members => return Ok(()),
                    _ => {}
                }
            }
        });
    }
    while let Some(r) = tokio::time::timeout(Duration::from_secs(60), readers.next()).await? {
        let heard: anyhow::Result<()> = r;
        if heard.is_ok() {
            received += 1;
        }
    }
    let broadcast = sent.elapsed();
    drop(readers);
    let news = if args.presence {
        "a join reached"
    } else {
        "broadcast reached"
    };
    println!("| transport | connections | opened in | broker RSS before | after | per connection | {news} | in |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {}{} | {} | {:.1} s | {} KiB | {} KiB | {:.1} KiB | {received} | {:.1} ms |",
        args.transport,
        if args.presence { " + presence" } else { "" },
        args.count,
        opened.as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / args.count as f64,
        broadcast.as_secs_f64() * 1e3
    );
    tokio::time::sleep(args.hold).await;
    Ok(())
}
