//! Direct writes: a lone request is written to the socket by the task that makes it.
//!
//! Handing a frame to the connection's writer task wakes that task, usually on another
//! thread: on a small machine that wake-up is a large part of a request's round trip (at
//! one publish in flight, the client made about five context switches per publish).
//! So when a request is the only one waiting for an answer, the writer task is idle
//! with nothing queued, and the connection is plain TCP, the caller takes the queue's
//! pen ([`crate::queue::Sender::take_pen`]), encodes the frame and writes it with a
//! non-blocking `try_write`. What the socket does not take goes back to the front of the
//! queue, for the writer task, which waits for the socket as usual. A fire-and-forget
//! publish is written the same way when it follows a quiet spell ([`QuietSpell`]).
//! Requests made while others are in flight, streams of publishes, TLS and QUIC all go
//! through the writer task, which batches them into one write.
//!
//! Nothing changes for delivery guarantees: a frame written directly to a connection
//! that then drops is in the same state as one the writer task wrote (an acknowledged
//! publish stays in the outbox and is resent; another request fails as "connection
//! lost"), and the end of a frame begun on one socket is never written to another.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc_proto::tcp::TcpWriter;

use crate::outgoing::{encode_outgoing, Outgoing};
use crate::queue;

/// The most scratch capacity a thread keeps between direct writes.
const KEEP_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where direct writers encode (one small buffer per thread).
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Writes `item` to the socket itself if the writer task is idle with nothing queued
/// and the connection allows it; otherwise hands `item` back, to be queued.
pub(crate) fn write(
    tx: &queue::Sender<Outgoing>,
    item: Outgoing,
    max_frame_size: usize,
) -> Option<Outgoing> {
    let Some(socket) = tx.take_pen() else {
        return Some(item);
    };
    write_with_pen(tx, socket, &item, max_frame_size);
    None
}

/// Writes `item` to `socket`, whose pen the caller took from `tx`, and hands the pen
/// back (with what the socket did not take).
pub(crate) fn write_with_pen(
    tx: &queue::Sender<Outgoing>,
    socket: TcpWriter,
    item: &Outgoing,
    max_frame_size: usize,
) {
    if let Outgoing::Batch(batch) = item {
        let bytes = &batch.bytes;
        // Already encoded: written from where it is, and the rest handed on as a slice.
        let done = try_write_all(&socket, bytes);
        let rest = (done < bytes.len()).then(|| Outgoing::Rest {
            bytes: bytes.slice(done..),
            socket: socket.clone(),
        });
        tx.put_pen_back(&socket, rest);
        return;
    }
    let rest = SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        encode_outgoing(item, max_frame_size, &mut buf);
        let done = try_write_all(&socket, &buf);
        let rest = (done < buf.len()).then(|| Outgoing::Rest {
            bytes: Bytes::copy_from_slice(&buf[done..]),
            socket: socket.clone(),
        });
        if buf.capacity() > KEEP_SCRATCH {
            // A large frame's buffer is not kept for the thread's lifetime.
            *buf = BytesMut::new();
        }
        rest
    });
    tx.put_pen_back(&socket, rest);
}

/// Writes as much of `bytes` as the socket takes without waiting; how much it took.
fn try_write_all(socket: &TcpWriter, bytes: &[u8]) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        match socket.try_write(&bytes[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The socket is full, or failed: the writer task writes the rest, and
            // meets the failure itself if there is one.
            Err(_) => break,
        }
    }
    done
}

/// Whether `item` is the end of a frame begun on a socket other than `current` (the
/// connection it was begun on is gone): writing it would corrupt the new connection's
/// stream. [`queue::Sender::put_pen_back`] drops such an end if the connection changed
/// while the pen was out; this catches one handed back just before the connection was
/// lost, still queued when the next one starts.
pub(crate) fn is_stale(item: &Outgoing, current: Option<&TcpWriter>) -> bool {
    match item {
        Outgoing::Rest { socket, .. } => !current.is_some_and(|c| c.same_socket(socket)),
        _ => false,
    }
}

/// Fire-and-forget frames (`publish_nowait`) are written directly only after a quiet
/// spell: at least [`QUIET`] since the last one written that way. Sparse traffic (a
/// publish every 100 µs, say) then costs no wake-up of the writer task, while a stream
/// of publishes still goes through the queue and is written in batches: once a direct
/// write has just happened, the next frame is queued, which wakes the writer, which
/// stays busy while the stream lasts.
#[derive(Debug)]
pub(crate) struct QuietSpell {
    start: Instant,
    /// When (ns after `start`) the last fire-and-forget frame was written directly.
    last_ns: AtomicU64,
}

/// How long since the last direct fire-and-forget write before the next may be direct.
pub(crate) const QUIET: Duration = Duration::from_micros(50);

impl QuietSpell {
    pub(crate) fn new() -> Self {
        QuietSpell {
            start: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Whether [`QUIET`] has passed since the last direct write; if so, counts this
    /// moment as the last. Reads the clock, so call it only when the pen is free.
    pub(crate) fn passed(&self) -> bool {
        self.passed_at(self.start.elapsed())
    }

    /// [`QuietSpell::passed`] at `now` (time since the spell tracker was made).
    fn passed_at(&self, now: Duration) -> bool {
        // Offset by one spell, so that the first frame (`last_ns` 0) qualifies.
        let now = (now + QUIET).as_nanos() as u64;
        let last = self.last_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < QUIET.as_nanos() as u64 {
            return false;
        }
        self.last_ns.store(now, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;
    use crate::message::PublishMessage;

    const MAX: usize = 4 << 20;

    /// A waker that records whether it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A loopback connection whose sending side has small buffers at both ends, so a
    /// large frame does not fit: (client write half, server stream).
    async fn small_pipe() -> (TcpWriter, TcpStream) {
        let listener = TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = listener.listen(1).unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = client.into_split();
        (TcpWriter::new(write), server)
    }

    /// Makes the receiver wait (idle, nothing in hand); returns whether it was woken.
    fn wait(rx: &mut queue::Receiver<Outgoing>) -> Arc<Flag> {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        assert!(rx.poll_recv(&mut Context::from_waker(&waker)).is_pending());
        flag
    }

    fn big_publish() -> Outgoing {
        let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        Outgoing::Publish(PublishMessage::new("direct.big", payload))
    }

    fn ping(nonce: u64) -> Outgoing {
        Outgoing::Frame(rtc_proto::Frame::from_op(rtc_proto::Op::Ping(
            rtc_proto::v1::Ping { nonce },
        )))
    }

    #[tokio::test]
    async fn a_frame_the_socket_does_not_take_whole_is_finished_by_the_writer() {
        let (socket, mut server) = small_pipe().await;
        let (tx, mut rx) = queue::bounded(16);
        rx.attach(Some(socket.clone()));
        // Busy writer: the caller queues.
        assert!(write(&tx, ping(1), MAX).is_some(), "the writer is not idle");
        let woken = wait(&mut rx);
        let mut expected = BytesMut::new();
        encode_outgoing(&big_publish(), MAX, &mut expected);
        assert!(write(&tx, big_publish(), MAX).is_none(), "written directly");
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the rest was handed to the writer"
        );
        let Ok(Outgoing::Rest { bytes: rest, .. }) = rx.try_recv() else {
            panic!("the unwritten end of the frame comes first");
        };
        assert!(
            !rest.is_empty() && rest.len() < expected.len(),
            "{}",
            rest.len()
        );
        // The writer finishes the frame; the peer reads exactly the encoded frame.
        let reading = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[..], &expected[..], "the frame arrives intact");
        });
        let mut writer = socket;
        writer.write_all(&rest).await.unwrap();
        reading.await.unwrap();
    }

    #[tokio::test]
    async fn the_writer_takes_nothing_while_a_sender_holds_the_pen() {
        let (socket, _server) = small_pipe().await;
        let (tx, mut rx) = queue::bounded(16);
        rx.attach(Some(socket));
        let woken = wait(&mut rx);
        let pen = tx.take_pen().expect("idle writer, empty queue");
        assert!(tx.take_pen().is_none(), "one pen");
        tx.try_send(ping(2)).unwrap();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // The push woke the writer, which finds the pen out and waits again.
        assert!(woken.0.load(Ordering::SeqCst));
        let woken = wait(&mut rx);
        tx.put_pen_back(&pen, None);
        assert!(woken.0.load(Ordering::SeqCst), "woken for what was queued");
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Frame(_))));
        assert!(tx.take_pen().is_none(), "the writer is busy until it waits");
    }

    #[tokio::test]
    async fn the_rest_of_a_frame_begun_on_a_lost_connection_is_dropped() {
        let (old, _old_server) = small_pipe().await;
        let (new, _new_server) = small_pipe().await;
        let rest = |socket: &TcpWriter| Outgoing::Rest {
            bytes: Bytes::from_static(b"end of frame"),
            socket: socket.clone(),
        };
        let (tx, mut rx) = queue::bounded(16);
        rx.attach(Some(old.clone()));
        wait(&mut rx);
        let pen = tx.take_pen().expect("idle writer");
        // The connection drops and the next one starts while the pen is out.
        rx.detach();
        rx.attach(Some(new.clone()));
        tx.put_pen_back(&pen, Some(rest(&pen)));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // An end handed back just before the connection dropped is still queued when
        // the next one starts: the writer of the new one must not write it.
        assert!(is_stale(&rest(&old), Some(&new)));
        assert!(is_stale(&rest(&old), None));
        assert!(!is_stale(&rest(&new), Some(&new)));
        assert!(!is_stale(&ping(3), Some(&new)));
        // No direct writes without a socket (TLS, QUIC, between connections).
        rx.detach();
        wait(&mut rx);
        assert!(tx.take_pen().is_none());
    }

    #[test]
    fn a_direct_fire_and_forget_write_needs_a_quiet_spell_since_the_last() {
        let quiet = QuietSpell::new();
        let us = Duration::from_micros;
        assert!(quiet.passed_at(us(3)), "the first qualifies");
        assert!(!quiet.passed_at(us(4)), "right after one: queued");
        assert!(!quiet.passed_at(us(3) + QUIET - us(1)), "not quite a spell");
        assert!(quiet.passed_at(us(3) + QUIET), "after a quiet spell");
        assert!(
            !quiet.passed_at(us(4) + QUIET),
            "counted from the last direct one"
        );
    }
}
