//! The floor under rtc's acknowledged publish with one in flight: a bare tokio
//! request/answer over loopback TCP with the same thread structure as rtc-client and
//! rtc-broker, and no work on either side. The server (multi-thread runtime, one task
//! per connection) reads a 160-byte request and writes a 24-byte answer. The client's
//! caller runs in `block_on`, writes each request itself with a non-blocking
//! `try_write` (as rtc-client's direct write does), and a reader task on a runtime
//! worker reads the answer and completes a oneshot, which wakes the caller.
//!
//! `client ADDR COUNT blocking` is the floor under any client at all: the same requests
//! from a plain blocking `std::net::TcpStream` on one thread (write, then read the
//! answer), no runtime and no second thread. Where it is no faster than the tokio client,
//! the round trip is the kernel's and the machine's wake-ups, not the client's threads.
//!
//! Run the server and the client as two processes, like a broker and its client:
//!
//! ```sh
//! cargo build --release -p rtc-benches --example rtt_floor
//! target/release/examples/rtt_floor server 127.0.0.1:17500 &
//! target/release/examples/rtt_floor client 127.0.0.1:17500 20000
//! target/release/examples/rtt_floor client 127.0.0.1:17500 20000 blocking
//! ```

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const REQUEST: usize = 160;
const ANSWER: usize = 24;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rtt_floor server ADDR | rtt_floor client ADDR [COUNT [blocking]]";
    let addr = args.get(2).context(usage)?.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("server") => runtime.block_on(serve(&addr)),
        Some("client") => {
            let count = match args.get(3) {
                Some(n) => n.parse().context("COUNT must be a number")?,
                None => 20_000,
            };
            let rate = match args.get(4).map(String::as_str) {
                None => runtime.block_on(requests(&addr, count))?,
                Some("blocking") => blocking_requests(&addr, count)?,
                Some(_) => bail!(usage),
            };
            println!("{rate:.0} requests/s");
            Ok(())
        }
        _ => bail!(usage),
    }
}

/// Answers every request of every connection until killed.
async fn serve(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut request = [0u8; REQUEST];
            let answer = [7u8; ANSWER];
            while socket.read_exact(&mut request).await.is_ok() {
                if socket.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends `count` requests one at a time; returns requests per second.
async fn requests(addr: &str, count: u64) -> anyhow::Result<f64> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (mut reader, writer) = socket.into_split();
    let writer = Arc::new(writer);
    let (waiting, mut answers) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    tokio::spawn(async move {
        let mut answer = [0u8; ANSWER];
        while reader.read_exact(&mut answer).await.is_ok() {
            match answers.recv().await {
                Some(done) => {
                    let _ = done.send(());
                }
                None => return,
            }
        }
    });
    let request = [1u8; REQUEST];
    let started = Instant::now();
    for _ in 0..count {
        let (done, answered) = oneshot::channel();
        waiting.send(done).context("reader stopped")?;
        let half: &tokio::net::tcp::OwnedWriteHalf = &writer;
        let written = half.as_ref().try_write(&request)?;
        if written != REQUEST {
            bail!("the socket took {written} of {REQUEST} bytes");
        }
        answered.await.context("connection closed")?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// The same requests from a blocking socket on this thread alone; returns requests per
/// second.
fn blocking_requests(addr: &str, count: u64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    let request = [1u8; REQUEST];
    let mut answer = [0u8; ANSWER];
    let started = Instant::now();
    for _ in 0..count {
        socket.write_all(&request)?;
        socket.read_exact(&mut answer)?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
