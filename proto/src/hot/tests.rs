//! The hand-written decoders against prost, on frames built by the codec.

use super::*;
use crate::codec::{encode_deliver, encode_message, LEN_PREFIX};
use prost::Message as _;
use std::collections::BTreeMap;

fn deliver_body(sub_id: u64, m: &Message) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    encode_deliver(sub_id, &encode_message(m), &mut buf);
    buf.freeze().slice(LEN_PREFIX..)
}

#[test]
fn decodes_what_prost_decodes() {
    let messages = [
        Message::default(),
        Message {
            topic: "orders.eu.created".into(),
            payload: Bytes::from(vec![7u8; 300]),
            headers: BTreeMap::from([
                ("k".to_string(), "v".to_string()),
                ("empty".to_string(), String::new()),
            ]),
            seq: u64::MAX,
            timestamp_ms: -5,
            msg_id: "m-1".into(),
            delivery_count: 3,
            reply_to: "r1f".into(),
            epoch: 300,
        },
        Message {
            topic: "ünïcödé.x".into(),
            payload: Bytes::from_static(b"hi"),
            seq: 1,
            timestamp_ms: 1_700_000_000_000,
            ..Default::default()
        },
    ];
    for (i, m) in messages.iter().enumerate() {
        let body = deliver_body(i as u64 * 1000, m);
        let ours = decode_deliver(&body).expect("a plain Deliver");
        assert_eq!(ours, Frame::decode(body.clone()).unwrap(), "message {i}");
    }
}

#[test]
fn publishes_decode_as_prost_decodes_them() {
    let publishes = [
        Publish::default(),
        Publish {
            req_id: u64::MAX,
            topic: "orders.eu.created".into(),
            payload: Bytes::from(vec![7u8; 300]),
            headers: BTreeMap::from([
                ("k".to_string(), "v".to_string()),
                ("empty".to_string(), String::new()),
            ]),
            msg_id: "m-1".into(),
        },
        Publish {
            topic: "ünïcödé.x".into(),
            payload: Bytes::from_static(b"hi"),
            ..Default::default()
        },
    ];
    for (i, p) in publishes.into_iter().enumerate() {
        let body = Bytes::from(Frame::from_op(Op::Publish(p)).encode_to_vec());
        let ours = decode(&body).expect("a plain Publish");
        assert_eq!(ours, Frame::decode(body.clone()).unwrap(), "publish {i}");
        for cut in 0..body.len() {
            assert_eq!(decode(&body.slice(..cut)), None, "publish {i} cut at {cut}");
        }
    }
    // An unknown field (6, varint) after the known ones: left to prost.
    let mut body = Frame::from_op(Op::Publish(Publish::default())).encode_to_vec();
    body.extend_from_slice(&[0x30, 0x01]);
    body[1] += 2;
    assert!(Frame::decode(&body[..]).is_ok());
    assert_eq!(decode(&Bytes::from(body)), None);
}

#[test]
fn anything_unexpected_is_left_to_prost() {
    let body = deliver_body(1, &Message::default());
    // Another operation.
    let ping = Frame::from_op(Op::Ping(crate::v1::Ping { nonce: 1 })).encode_to_vec();
    assert_eq!(decode_deliver(&Bytes::from(ping)), None);
    // An unknown field inside Message (field 15, varint).
    let m = encode_message(&Message::default());
    let mut with_unknown = m.to_vec();
    with_unknown.extend_from_slice(&[0x78, 0x01]);
    let mut buf = bytes::BytesMut::new();
    encode_deliver(1, &Bytes::from(with_unknown), &mut buf);
    assert_eq!(decode_deliver(&buf.freeze().slice(LEN_PREFIX..)), None);
    // Truncated anywhere: never a panic, never a wrong frame.
    for cut in 0..body.len() {
        assert_eq!(decode_deliver(&body.slice(..cut)), None, "cut at {cut}");
    }
    // Invalid UTF-8 in the topic.
    let mut bad = deliver_body(
        1,
        &Message {
            topic: "ab".into(),
            ..Default::default()
        },
    )
    .to_vec();
    let at = bad.windows(2).position(|w| w == b"ab").unwrap();
    bad[at] = 0xff;
    assert_eq!(decode_deliver(&Bytes::from(bad)), None);
}

#[test]
fn a_raw_delivery_is_peeked_by_its_sub_id_and_decoded_later() {
    let m = Message {
        topic: "orders.eu".into(),
        payload: Bytes::from_static(b"p"),
        seq: 4,
        ..Default::default()
    };
    let raw = RawDelivery::peek(deliver_body(9, &m)).expect("a delivery");
    assert_eq!(raw.sub_id, 9);
    let d = raw.decode().unwrap();
    assert_eq!((d.topic.as_str(), d.message.seq), ("orders.eu", 4));
    // sub_id 0 is not written at all: left to the frame decoder, as is any other frame.
    assert!(RawDelivery::peek(deliver_body(0, &m)).is_err());
    let ping = Frame::from_op(Op::Ping(crate::v1::Ping { nonce: 1 })).encode_to_vec();
    assert!(RawDelivery::peek(Bytes::from(ping)).is_err());
    // A Deliver without a message passes the peek but does not decode.
    let empty = Frame::from_op(Op::Deliver(Deliver {
        sub_id: 5,
        message: None,
    }))
    .encode_to_vec();
    let raw = RawDelivery::peek(Bytes::from(empty)).expect("peeked by its sub_id");
    assert!(matches!(raw.decode(), Err(CodecError::NotADelivery)));
}
