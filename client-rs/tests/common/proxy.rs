//! A TCP proxy for fault tests: forwards loopback connections to a target, and on
//! command cuts every current connection, refuses new ones, starts dropping the
//! target's replies, or passes them on cut into pieces of 1 to 13 bytes, each its own
//! write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    generation: watch::Sender<u64>,
    drop_replies: Arc<AtomicBool>,
    chop_replies: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a pump does with the bytes it reads.
#[derive(Clone, Default)]
struct Mode {
    drop: Option<Arc<AtomicBool>>,
    chop: Option<Arc<AtomicBool>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, gen_rx) = watch::channel(0u64);
        let drop_replies = Arc::new(AtomicBool::new(false));
        let chop_replies = Arc::new(AtomicBool::new(false));
        let replies = Mode {
            drop: Some(drop_replies.clone()),
            chop: Some(chop_replies.clone()),
        };
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = refusing.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    // Closed at once: the client's attempt fails.
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                // Each piece of a chopped reply goes out as its own segment.
                let _ = client.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, gen_rx.clone(), Mode::default()));
                tokio::spawn(pump(sr, cw, gen_rx.clone(), replies.clone()));
            }
        });
        Proxy {
            addr,
            generation,
            drop_replies,
            chop_replies,
            refusing,
            task,
        }
    }

    /// Cuts every connection and closes new ones at once (or accepts them again): the
    /// client is away, with nothing lost on a link that is still up.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
        if on {
            self.cut();
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Closes every connection open now; new ones are accepted as before.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forward requests but throw the target's replies away (or stop doing so).
    pub fn drop_replies(&self, on: bool) {
        self.drop_replies.store(on, Ordering::SeqCst);
    }

    /// Pass the target's replies on in pieces of 1 to 13 bytes (or stop doing so).
    pub fn chop_replies(&self, on: bool) {
        self.chop_replies.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut generation: watch::Receiver<u64>,
    mode: Mode,
) {
    let is_on =
        |flag: &Option<Arc<AtomicBool>>| flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
    let mut piece = 1;
    generation.borrow_and_update();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = generation.changed() => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if is_on(&mode.drop) {
            continue;
        }
        if !is_on(&mode.chop) {
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
            continue;
        }
        for chunk in chop(&buf[..n], &mut piece) {
            if to.write_all(chunk).await.is_err() {
                return;
            }
            // Let the reader take this piece before the next is written.
            tokio::task::yield_now().await;
        }
    }
}

/// `bytes` in pieces of 1, 2, … 13, 1, 2, … bytes; `piece` carries on across calls.
fn chop<'a>(mut bytes: &'a [u8], piece: &mut usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    while !bytes.is_empty() {
        let (head, rest) = bytes.split_at((*piece).min(bytes.len()));
        pieces.push(head);
        bytes = rest;
        *piece = *piece % 13 + 1;
    }
    pieces
}
