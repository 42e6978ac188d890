//! Tests of the outbound queue and its writer.

use super::*;
use rtc_proto::codec::{encode_message, FrameCodec};
use rtc_proto::v1::frame::Op;
use rtc_proto::{v1, ErrorCode};
use tokio_util::codec::Decoder;

/// Every frame in a batch the writer took, decoded.
fn frames(mut batch: BytesMut) -> Vec<Frame> {
    let mut codec = FrameCodec::new(1 << 20);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut batch).expect("decodes") {
        out.push(f);
    }
    assert!(batch.is_empty(), "nothing but whole frames");
    out
}

fn zeros(n: usize) -> Bytes {
    Bytes::from(vec![0u8; n])
}

#[test]
fn backlogged_past_half_a_cap_until_the_writer_takes_the_queue() {
    for share in [Share::Copy, Share::Reference] {
        let msg = zeros(10);
        let outbox = Outbox::new(1 << 20, 4, 1 << 20);
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(!outbox.is_backlogged(), "half full is not behind");
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(outbox.is_backlogged(), "three of four");
        assert_eq!(outbox.drain().len(), 3 * delivery_len(1, 10));
        assert!(!outbox.is_backlogged(), "the writer took everything");
    }
}

#[test]
fn deliveries_beyond_the_caps_are_dropped_and_counted() {
    for share in [Share::Copy, Share::Reference] {
        let msg = zeros(100);
        let one = delivery_len(1, 100);
        let outbox = Outbox::new(10 * one, 3, 1 << 20);
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(!outbox.push_deliver(1, &msg, share), "frame cap");
        assert_eq!(outbox.dropped_total(), 1);

        let outbox = Outbox::new(2 * one, 100, 1 << 20);
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(outbox.push_deliver(1, &msg, share));
        assert!(!outbox.push_deliver(1, &msg, share), "byte cap");
        assert_eq!(outbox.dropped_total(), 1);
        assert!(
            !outbox.try_push_deliver(1, &msg),
            "try_push also respects the caps"
        );
        assert_eq!(outbox.dropped_total(), 1, "but does not count a drop");
    }
}

#[tokio::test]
async fn responses_are_queued_past_the_delivery_cap_and_closed_is_reported() {
    let x = Bytes::from_static(b"x");
    let outbox = Outbox::new(delivery_len(1, 150), 1, 1 << 20);
    assert!(outbox.push_deliver(1, &zeros(150), Share::Copy));
    assert!(!outbox.push_deliver(1, &x, Share::Copy));
    outbox
        .push_frame_unflushed(Frame::error(1, ErrorCode::Internal, "x"))
        .await
        .unwrap();
    outbox.close();
    assert_eq!(
        outbox
            .push_frame_unflushed(Frame::error(2, ErrorCode::Internal, "x"))
            .await,
        Err(Closed)
    );
    assert!(!outbox.push_deliver(1, &x, Share::Reference));
}

#[tokio::test]
async fn the_queue_holds_whole_frames_in_the_order_they_were_pushed() {
    let message = |payload: &'static [u8]| {
        encode_message(&v1::Message {
            payload: Bytes::from_static(payload),
            ..Default::default()
        })
    };
    let response = Frame::error(3, ErrorCode::Internal, "r");
    let outbox = Outbox::new(1 << 20, 100, 1 << 20);
    assert!(outbox.push_deliver(7, &message(b"one"), Share::Copy));
    outbox.push_frame_now(response.clone()).unwrap();
    assert!(outbox.try_push_deliver(300, &message(b"two")));
    assert!(outbox.push_deliver(8, &message(b"three"), Share::Copy));
    outbox.push_deliver_wait(9, &message(b"")).await.unwrap();
    assert!(outbox.push_deliver(10, &message(b"four"), Share::Reference));
    let got: Vec<String> = frames(outbox.drain())
        .into_iter()
        .map(|f| match f.op {
            Some(Op::Deliver(d)) => {
                let m = d.message.expect("a message");
                format!("{} {}", d.sub_id, String::from_utf8_lossy(&m.payload))
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            "7 one",
            &format!("{:?}", response.op),
            "300 two",
            "8 three",
            "9 ",
            "10 four"
        ]
    );
}

#[test]
fn a_response_above_the_frame_limit_is_left_out_and_the_queue_goes_on() {
    let outbox = Outbox::new(1 << 20, 100, 64);
    let big = Frame::error(1, ErrorCode::Internal, "x".repeat(100));
    assert_eq!(outbox.push_frame_deferred(big), Ok(false));
    assert!(outbox.drain().is_empty(), "nothing was queued");
    let small = Frame::error(1, ErrorCode::Internal, "r");
    assert_eq!(outbox.push_frame_deferred(small.clone()), Ok(true));
    assert_eq!(frames(outbox.drain()), [small]);
}

#[test]
fn copies_fill_chunks_in_order_and_a_large_one_gets_its_own() {
    let outbox = Outbox::new(1 << 24, 1 << 20, 1 << 20);
    let payloads: Vec<Bytes> = (0..2000u32)
        .map(|i| {
            let len = if i == 1000 {
                3 * CHUNK
            } else {
                (i % 200) as usize
            };
            Bytes::from(vec![i as u8; len])
        })
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        assert!(outbox.push_deliver(i as u64, p, Share::Copy));
    }
    {
        let st = outbox.lock();
        assert!(st.entries.len() > 3, "spread over chunks");
        assert_eq!(st.frames, 2000);
        let mut sizes = st.entries.iter().map(|e| match e {
            Entry::Chunk(buf) => buf.len(),
            Entry::Shared { .. } => panic!("nothing was shared"),
        });
        assert_eq!(st.bytes, sizes.clone().sum::<usize>());
        // The large frame alone in its chunk: exactly its length.
        assert!(sizes.any(|len| len == delivery_len(1000, 3 * CHUNK)));
    }
    let all = outbox.drain();
    let mut expected = BytesMut::new();
    for (i, p) in payloads.iter().enumerate() {
        encode_deliver(i as u64, p, &mut expected);
    }
    assert!(all == expected, "the same bytes in the same order");
    let st = outbox.lock();
    assert_eq!((st.frames, st.bytes, st.entries.len()), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_writer_writes_both_kinds_in_order_and_releases_its_buffers_once_idle() {
    use tokio::io::AsyncReadExt;
    let outbox = std::sync::Arc::new(Outbox::new(1 << 24, 1 << 20, 1 << 20));
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let writer_task = tokio::spawn(write_loop(outbox.clone(), ByteStream(writer), Default::default()));
    let mut expected = BytesMut::new();
    for i in 0..2000u64 {
        let msg = Bytes::from(vec![i as u8; 100]);
        let share = if i % 3 == 0 {
            Share::Reference
        } else {
            Share::Copy
        };
        assert!(outbox.push_deliver(i, &msg, share));
        encode_deliver(i, &msg, &mut expected);
    }
    let mut got = vec![0u8; expected.len()];
    reader.read_exact(&mut got).await.unwrap();
    assert!(got == expected[..], "every delivery, in order");
    assert!(outbox.has_spares(), "written chunks are kept while busy");
    tokio::time::sleep(TRIM_AFTER * 2).await;
    assert!(!outbox.has_spares(), "and released once idle");
    // The writer goes on.
    assert!(outbox.push_deliver(1, &Bytes::from(vec![1u8; 100]), Share::Copy));
    let mut one = vec![0u8; delivery_len(1, 100)];
    reader.read_exact(&mut one).await.unwrap();
    assert!(one.ends_with(&[1u8; 100]));
    outbox.close();
    writer_task.await.unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing else was written");
}

#[tokio::test]
async fn a_writer_that_stops_leaves_its_queue_holding_nothing() {
    use tokio::io::AsyncReadExt;
    let outbox = std::sync::Arc::new(Outbox::new(1 << 24, 1 << 20, 1 << 20));
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let writer_task = tokio::spawn(write_loop(outbox.clone(), ByteStream(writer), Default::default()));
    let msg = zeros(100);
    for _ in 0..1000 {
        assert!(outbox.push_deliver(1, &msg, Share::Copy));
    }
    let mut got = vec![0u8; 1000 * delivery_len(1, 100)];
    reader.read_exact(&mut got).await.unwrap();
    assert!(outbox.has_spares());
    // The client goes away with deliveries still queued.
    drop(reader);
    for _ in 0..1000 {
        outbox.push_deliver(1, &msg, Share::Copy);
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), writer_task)
        .await
        .expect("the writer stops once the socket fails")
        .unwrap();
    assert!(outbox.is_closed());
    let st = outbox.lock();
    assert_eq!((st.entries.len(), st.spares.len(), st.bytes), (0, 0, 0));
}

#[tokio::test]
async fn the_writer_reports_dropped_deliveries_before_the_next_batch() {
    use tokio::io::AsyncReadExt;
    let outbox = std::sync::Arc::new(Outbox::new(1 << 20, 2, 1 << 20));
    let msg = encode_message(&v1::Message {
        payload: zeros(10),
        ..Default::default()
    });
    for _ in 0..5 {
        outbox.push_deliver(1, &msg, Share::Copy);
    }
    assert_eq!(outbox.dropped_total(), 3);
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let writer_task = tokio::spawn(write_loop(outbox.clone(), ByteStream(writer), Default::default()));
    outbox.close();
    writer_task.await.unwrap();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).await.unwrap();
    let got = frames(BytesMut::from(&all[..]));
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Frame::slow_consumer(3));
    assert!(matches!(got[1].op, Some(Op::Deliver(_))));
}
