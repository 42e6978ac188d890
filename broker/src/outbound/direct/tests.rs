//! Tests of direct writes with a socket that takes a set number of bytes.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rtc_proto::codec::encode_deliver;

use super::*;
use crate::outbound::{delivery_len, Share};
use crate::router::Flushes;

/// A socket that takes up to `room` bytes, at most `step` per call, then would block;
/// or fails every write.
#[derive(Debug, Default)]
struct FakeSocket {
    taken: Mutex<Vec<u8>>,
    room: AtomicUsize,
    step: usize,
    broken: bool,
}

impl FakeSocket {
    fn new(room: usize, step: usize) -> Arc<FakeSocket> {
        Arc::new(FakeSocket {
            room: AtomicUsize::new(room),
            step,
            ..FakeSocket::default()
        })
    }

    fn taken(&self) -> Vec<u8> {
        self.taken.lock().unwrap().clone()
    }
}

impl DirectWrite for FakeSocket {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = buf
            .len()
            .min(self.step)
            .min(self.room.load(Ordering::SeqCst));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room.fetch_sub(n, Ordering::SeqCst);
        self.taken.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn outbox_on(socket: &Arc<FakeSocket>) -> Arc<Outbox> {
    let direct: Arc<dyn DirectWrite> = socket.clone();
    Arc::new(Outbox::with_direct(1 << 24, 1 << 20, 1 << 20, Some(direct)))
}

/// Queues `n` deliveries from `first` on, alternating copied and shared ones, without
/// waking anyone; appends their encoding to `expected`.
fn push(outbox: &Outbox, first: u64, n: u64, expected: &mut BytesMut) {
    for i in first..first + n {
        let msg = Bytes::from(vec![i as u8; 50 + (i % 7) as usize * 40]);
        let share = if i % 3 == 0 {
            Share::Reference
        } else {
            Share::Copy
        };
        assert!(outbox.push_deliver_deferred(i, &msg, share).is_some());
        encode_deliver(i, &msg, expected);
    }
}

#[test]
fn a_flush_writes_what_the_socket_takes_and_leaves_the_rest_in_order() {
    // Sockets that fill at many points: inside a copied chunk and inside shared ones.
    for room in (3_000..9_000).step_by(331) {
        let socket = FakeSocket::new(room, 700);
        let outbox = outbox_on(&socket);
        let mut expected = BytesMut::new();
        push(&outbox, 0, 100, &mut expected);
        assert!(expected.len() > 10_000, "more than the socket takes");
        outbox.flush();
        assert_eq!(socket.taken(), expected[..room], "a prefix, cut mid-frame");
        // Queued after the flush: behind what the socket did not take.
        push(&outbox, 100, 50, &mut expected);
        {
            let st = outbox.lock();
            assert!(!st.writing, "the pen is put down");
            assert_eq!(
                st.bytes,
                expected.len() - room,
                "the queue counts what is left"
            );
        }
        let rest = outbox.drain();
        assert!(
            rest[..] == expected[room..],
            "room {room}: then the rest, in order"
        );
    }
}

#[test]
fn a_flush_with_room_writes_everything_and_recycles_the_chunks() {
    let socket = FakeSocket::new(usize::MAX, 1_000);
    let outbox = outbox_on(&socket);
    let mut expected = BytesMut::new();
    push(&outbox, 0, 300, &mut expected);
    outbox.flush();
    assert!(socket.taken() == expected[..]);
    let st = outbox.lock();
    assert_eq!((st.frames, st.bytes, st.entries.len()), (0, 0, 0));
    assert!(!st.spares.is_empty(), "written chunks are kept for reuse");
}

#[test]
fn a_flush_leaves_the_queue_to_whoever_holds_the_pen() {
    let socket = FakeSocket::new(usize::MAX, usize::MAX);
    let outbox = outbox_on(&socket);
    let mut expected = BytesMut::new();
    push(&outbox, 0, 3, &mut expected);
    // The writer task takes a batch and is writing it.
    let mut batch = VecDeque::new();
    assert_eq!(outbox.try_take(&mut batch), Ok(true));
    push(&outbox, 3, 3, &mut BytesMut::new());
    outbox.flush();
    assert!(socket.taken().is_empty(), "no write while the pen is held");
    assert_eq!(outbox.try_take(&mut VecDeque::new()), Ok(false));
    outbox.done_writing();
    outbox.flush();
    assert_eq!(
        socket.taken().len(),
        (3..6)
            .map(|i| delivery_len(i, 50 + (i % 7) as usize * 40))
            .sum::<usize>()
    );
}

#[test]
fn a_failed_direct_write_closes_the_queue() {
    let socket = Arc::new(FakeSocket {
        broken: true,
        ..FakeSocket::default()
    });
    let outbox = outbox_on(&socket);
    push(&outbox, 0, 5, &mut BytesMut::new());
    outbox.flush();
    assert!(outbox.is_closed());
    assert_eq!(
        outbox.push_deliver_deferred(1, &Bytes::from_static(b"x"), Share::Copy),
        None
    );
    assert_eq!(
        outbox.try_take(&mut VecDeque::new()),
        Err(crate::outbound::Closed)
    );
}

#[tokio::test]
async fn without_a_direct_socket_a_flush_wakes_the_writer_task() {
    use tokio::io::AsyncReadExt;
    let outbox = Arc::new(Outbox::new(1 << 24, 1 << 20, 1 << 20));
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let writer_task = tokio::spawn(crate::outbound::write_loop(outbox.clone(), crate::outbound::ByteStream(writer), Default::default()));
    let mut expected = BytesMut::new();
    push(&outbox, 0, 10, &mut expected);
    let mut later = Flushes::default();
    later.push(outbox.clone());
    // Dropping the list flushes what it holds.
    drop(later);
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_exact(&mut got),
    )
    .await
    .expect("the writer task was woken")
    .unwrap();
    assert!(got == expected[..]);
    outbox.close();
    writer_task.await.unwrap();
}

#[test]
fn a_slow_consumer_notice_is_left_to_the_writer_task() {
    let socket = FakeSocket::new(usize::MAX, usize::MAX);
    let direct: Arc<dyn DirectWrite> = socket.clone();
    let outbox = Outbox::with_direct(1 << 20, 1, 1 << 20, Some(direct));
    let x = Bytes::from_static(b"x");
    assert_eq!(outbox.push_deliver_deferred(1, &x, Share::Copy), Some(true));
    assert_eq!(
        outbox.push_deliver_deferred(1, &x, Share::Copy),
        None,
        "over the cap"
    );
    outbox.flush();
    assert!(
        socket.taken().is_empty(),
        "the notice must go first, from the writer"
    );
    assert_eq!(outbox.drain().len(), delivery_len(1, 1));
}

#[tokio::test(start_paused = true)]
async fn spare_chunks_left_by_direct_writes_are_released_once_idle() {
    let socket = FakeSocket::new(usize::MAX, usize::MAX);
    let outbox = outbox_on(&socket);
    let (writer, _reader) = tokio::io::duplex(1 << 16);
    let writer_task = tokio::spawn(crate::outbound::write_loop(outbox.clone(), crate::outbound::ByteStream(writer), Default::default()));
    // The writer task waits with nothing to time: it holds no memory.
    tokio::task::yield_now().await;
    push(&outbox, 0, 10, &mut BytesMut::new());
    outbox.flush();
    assert!(outbox.has_spares(), "the written chunk is kept for reuse");
    tokio::time::sleep(crate::outbound::TRIM_AFTER * 2).await;
    assert!(
        !outbox.has_spares(),
        "and released once the connection is idle"
    );
    assert!(!socket.taken().is_empty());
    outbox.close();
    writer_task.await.unwrap();
}

/// Whether the writer task has been woken since the last look (a stored permit).
fn woken(outbox: &Outbox) -> bool {
    use futures_util::FutureExt;
    outbox.ready.notified().now_or_never().is_some()
}

#[test]
fn direct_writes_wake_the_writer_for_spares_only_until_it_times_them() {
    let socket = FakeSocket::new(usize::MAX, usize::MAX);
    let outbox = outbox_on(&socket);
    let mut expected = BytesMut::new();
    // Copied deliveries (`push` copies those not divisible by 3): each goes into a
    // chunk, which the direct write hands back as a spare.
    push(&outbox, 1, 1, &mut expected);
    outbox.flush();
    assert!(
        woken(&outbox),
        "the first spare chunk is news to the writer"
    );

    // The writer task starts timing their release; from now on a direct write that
    // takes the spare chunk and hands it back must not wake it.
    assert!(outbox.time_spares());
    for i in [2, 4, 5] {
        push(&outbox, i, 1, &mut expected);
        outbox.flush();
        assert!(!woken(&outbox), "write {i} woke the writer for nothing");
    }

    // Released after idling: the next spare chunk is news again.
    outbox.release_spares();
    push(&outbox, 7, 1, &mut expected);
    outbox.flush();
    assert!(woken(&outbox));
    assert_eq!(socket.taken(), expected, "everything was written directly");
}
